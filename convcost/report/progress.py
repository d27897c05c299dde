"""Progress on standard error while timing: a rich bar with an ETA on a terminal, a plain line every
few seconds elsewhere (CI logs, pipes). Standard output stays the report alone."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, TextIO

PLAIN_INTERVAL_S = 5.0


class RichProgress:
    """A transient rich bar: what, bar, done/total, elapsed, estimated time left, current item."""

    def __init__(self, what: str, unit: str = "kernels") -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.what, self.unit = what, unit
        self.p = Progress(TextColumn("{task.description}", markup=False,
                                     style="bold"), BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("left"),
                          TimeRemainingColumn(), TextColumn("{task.fields[item]}", markup=False),
                          console=Console(stderr=True), transient=True)
        self.task: Any = None

    def __enter__(self) -> RichProgress:
        self.p.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.p.__exit__(*exc)

    def start(self, total: int, budget_s: float | None = None,
              what: str | None = None) -> None:
        """A bar for ``total`` items (one per call: several backends get a bar each)."""
        self.task = self.p.add_task(f"{what or self.what} ({total} {self.unit})", total=total,
                                    item="")

    def advance(self, label: str) -> None:
        if self.task is not None:
            self.p.update(self.task, advance=1, item=label)


class PlainProgress:
    """``timing 34/61 kernels, 41 s left`` on ``stream`` at most every ``interval`` seconds."""

    def __init__(self, what: str, unit: str = "kernels", stream: TextIO | None = None,
                 interval: float = PLAIN_INTERVAL_S) -> None:
        self.what, self.unit, self.interval = what, unit, interval
        self.stream = stream or sys.stderr
        self.total = 0
        self.done = 0
        self.budget_s: float | None = None
        self.t0 = self.last = 0.0

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def start(self, total: int, budget_s: float | None = None,
              what: str | None = None) -> None:
        self.total, self.budget_s, self.done = total, budget_s, 0
        if what:
            self.what = what
        self.t0 = self.last = time.monotonic()
        if total:
            budget = f" (time budget {budget_s:.0f} s)" if budget_s else ""
            self._line(f"{self.what}: {total} {self.unit} to measure{budget}")

    def advance(self, label: str) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= self.interval and self.done < self.total:
            self.last = now
            self._line(f"{self.what} {self.done}/{self.total} {self.unit}, "
                       f"{self.left(now):.0f} s left")

    def left(self, now: float) -> float:
        """Seconds left: the pace so far, bounded by what remains of the budget."""
        spent = now - self.t0
        est = spent / self.done * (self.total - self.done) if self.done else float("inf")
        if self.budget_s is not None:
            est = min(est, max(0.0, self.budget_s - spent))
        return 0.0 if est == float("inf") else est

    def _line(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a broken stderr never stops the run
            print(text, file=self.stream, flush=True)


def progress_for(what: str, unit: str = "kernels", stream: TextIO | None = None) -> Any:
    """A rich bar when ``stream`` (default stderr) is a terminal, else plain lines."""
    s = stream or sys.stderr
    try:
        tty = s.isatty()
    except (AttributeError, ValueError):
        tty = False
    return RichProgress(what, unit) if tty else PlainProgress(what, unit, s)
