"""Where a kernel's figure came from (or why there is none): one enum, with the text reports
show for it. The values are the strings the JSON reports carry (``timing.source``)."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """A kernel's or a paired ratio's state in a timing run."""

    MEASURED = "measured"
    CACHED = "cached"  # from the latency table
    SAME = "same"  # a variant identical to its original: not measured
    FAILED = "failed"
    BUDGET = "budget"  # the time budget ran out before it
    INTERRUPTED = "interrupted"
    ABSENT = "absent"  # not in the latency table, and the run measures nothing (--from-table)
    UNSUPPORTED = "unsupported"  # the backend cannot run it (a backward on an inference runtime)
    PENDING = "pending"

    def __str__(self) -> str:  # the plain value in f-strings and CSV, on every Python
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def missing_text(self) -> str:
        """What a report says in place of a figure with this status."""
        return _MISSING.get(self, "not measured")

    @classmethod
    def of(cls, value: str | None) -> Status | None:
        """The status a report's ``source`` field names, None when it names none."""
        try:
            return cls(value)
        except ValueError:
            return None


_MISSING = {Status.BUDGET: "not measured (budget)",
            Status.INTERRUPTED: "not measured (interrupted)",
            Status.ABSENT: "not in the latency table",
            Status.UNSUPPORTED: "no training figure: this backend runs no backward"}
