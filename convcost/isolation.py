"""Run a user's model code in a child process, so that nothing it does can fake a result.

Importing, building, counting and timing a model from ``file.py:Name``, ``package.module:Name``,
``torchvision:``/``timm:`` or a ``.pt2`` program happen in a forked child (torch is already
imported, so this costs milliseconds). In the child:

- standard output is redirected to standard error: a model that prints (at import or in its
  forward) never corrupts a JSON report;
- SIGINT and SIGTERM stop the work like Ctrl-C: finished measurements are kept and sent back.

The parent waits for the child's result. A child that ends without one (``sys.exit``,
``os._exit``, an abort or a segfault in the model's code) is reported as one line naming the
source, what it was doing and how it ended, exit 3; so is one that does not finish within the
timeout of its phase (``--timeout`` for loading and counting; the time budget, plus a margin,
for timing). SIGTERM received by the parent is passed on to the child.

How the child starts (``CONVCOST_ISOLATION``, else the default below):

- ``fork`` (the ``convcost`` command): instant, the parent's imports are inherited. Safe because
  the command's own process never computes before it forks (GNU OpenMP, torch's CPU thread
  pool, does not survive a fork once its threads exist);
- ``spawn`` (convcost used as a library, or from a process that already ran torch code): a
  fresh interpreter, about two seconds slower, always safe;
- ``off``: in-process, no containment (the test suite's default; specs always run so).

Where ``fork`` is unavailable (Windows), ``spawn`` is used.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from convcost.errors import ConvcostError, ExitStatus, ModelError

DEFAULT_TIMEOUT_S = 600.0
TIMING_MARGIN_S = 120.0  # on top of the time budget: warm-up of the last group, output checks

_PHASE = {"conn": None}  # the child's end of the pipe (None in the parent or in-process)
TERMINATED = {"flag": False}  # SIGTERM arrived (exit 143 rather than 130)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the finished work is kept."""


def phase(name: str, allowed_s: float | None = None) -> None:
    """Tell the parent what the child is doing now, and how long it may take (None: the
    default timeout). A no-op outside a child."""
    conn = _PHASE["conn"]
    if conn is not None:
        with contextlib.suppress(OSError, ValueError):
            conn.send(("phase", name, allowed_s))


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs (in-process work), SIGTERM raises :class:`Terminated`."""
    def handler(signum: int, frame: Any) -> None:
        TERMINATED["flag"] = True
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


MODES = ("fork", "spawn", "off")
DEFAULT_MODE = {"mode": "spawn"}  # the convcost command sets "fork" (see cli.main)


def mode() -> str:
    m = os.environ.get("CONVCOST_ISOLATION", "").strip().lower() or DEFAULT_MODE["mode"]
    if m not in MODES:
        m = DEFAULT_MODE["mode"]
    if m == "fork" and "fork" not in mp.get_all_start_methods():
        m = "spawn"
    return m


def call(fn: Callable[..., Any], *args: Any, isolate: bool, label: str,
         timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """``fn(*args)``, in a child process when ``isolate`` (see the module docstring for how),
    else in-process. ``fn`` and ``args`` must be picklable for ``spawn``.

    Raises what ``fn`` raised when it is a :class:`ConvcostError` or KeyboardInterrupt;
    :class:`ModelError` (exit 3) when the child ends without a result or runs out of time."""
    m = mode()
    if not isolate or m == "off":
        with sigterm_as_interrupt():
            return fn(*args)
    return _run_child(fn, args, label, timeout_s, m)


def _child_main(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """In the child: stdout to stderr, signals to KeyboardInterrupt, run, send, leave."""
    _PHASE["conn"] = conn
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    last = {"t": 0.0}

    def on_signal(signum: int, frame: Any) -> None:
        now = time.monotonic()
        if now - last["t"] < 1.0:  # Ctrl-C reaches parent and child: one interrupt is enough
            return
        last["t"] = now
        if signum == signal.SIGTERM:
            TERMINATED["flag"] = True
            raise Terminated()
        raise KeyboardInterrupt()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        result = fn(*args)
        msg: tuple[Any, ...] = ("ok", result)
    except KeyboardInterrupt:
        msg = ("interrupted", TERMINATED["flag"])
    except ConvcostError as e:
        msg = ("error", type(e), str(e), int(e.exit_status))
    except BaseException as e:  # a bug, or SystemExit from the model's code
        if isinstance(e, SystemExit):
            code = e.code if isinstance(e.code, (int, str)) or e.code is None else str(e.code)
            msg = ("exit", code)
        else:
            first = str(e).strip().splitlines()
            msg = ("internal", f"{type(e).__name__}: {first[0] if first else ''}",
                   traceback.format_exc())
    try:
        conn.send(msg)
    except Exception as e:  # a result that cannot be pickled is a bug in convcost
        with contextlib.suppress(Exception):
            conn.send(("internal", f"cannot send the result back: {type(e).__name__}: {e}", ""))
    finally:
        with contextlib.suppress(Exception):
            conn.close()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(0)


def _run_child(fn: Callable[..., Any], args: tuple[Any, ...], label: str,
               timeout_s: float, start: str = "fork") -> Any:
    ctx = mp.get_context(start)
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    proc = ctx.Process(target=_child_main, args=(child_conn, fn, args), daemon=True)
    term_seen = {"n": 0}

    def on_term(signum: int, frame: Any) -> None:  # pass SIGTERM on; the child keeps results
        TERMINATED["flag"] = True
        term_seen["n"] += 1
        with contextlib.suppress(OSError):
            if proc.pid:
                os.kill(proc.pid, signal.SIGTERM)

    old_term = signal.signal(signal.SIGTERM, on_term)
    proc.start()
    child_conn.close()
    current, deadline = "loading the model", time.monotonic() + timeout_s
    msg = None
    interrupted = False
    try:
        while msg is None:
            try:
                ready = parent_conn.poll(0.2)
            except KeyboardInterrupt:  # Ctrl-C: the child got it too (same process group)
                interrupted = True
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGINT)  # in case it came from kill, not a tty
                deadline = max(deadline, time.monotonic() + 30)
                continue
            if ready:
                try:
                    got = parent_conn.recv()
                except (EOFError, OSError):
                    break  # the child ended without a result
                if got[0] == "phase":
                    current = got[1]
                    deadline = time.monotonic() + (got[2] if got[2] is not None else timeout_s)
                    continue
                msg = got
                break
            if not proc.is_alive():
                if parent_conn.poll(0.05):
                    continue
                break
            if time.monotonic() > deadline:
                _kill(proc)
                raise ModelError(f"{label}: the model's code did not finish {current} within "
                                 f"{timeout_s if 'timing' not in current else 'its time'} s "
                                 "(an endless loop, or a far too large input); raise --timeout "
                                 "if it needs longer")
    finally:
        signal.signal(signal.SIGTERM, old_term)
        parent_conn.close()
    proc.join(5)
    if proc.is_alive():
        _kill(proc)
    if msg is None:
        raise ModelError(f"{label}: the model's code ended the process while {current} "
                         f"({_how(proc.exitcode)}); nothing it computed is reported")
    kind = msg[0]
    if kind == "ok":
        return msg[1]
    if kind == "interrupted":
        if msg[1]:
            raise Terminated()
        raise KeyboardInterrupt()
    if kind == "error":
        cls, text, status = msg[1], msg[2], msg[3]
        err = cls.__new__(cls)
        Exception.__init__(err, text)
        err.exit_status = ExitStatus(status)
        raise err
    if kind == "exit":
        raise ModelError(f"{label}: the model's code called sys.exit({msg[1]!r}) while {current}; "
                         "nothing it computed is reported")
    if interrupted:
        raise KeyboardInterrupt()
    raise InternalError(msg[1], msg[2])


class InternalError(RuntimeError):
    """A bug in convcost, raised in the child; the child's traceback is kept for --traceback."""

    def __init__(self, text: str, child_traceback: str) -> None:
        super().__init__(text)
        self.child_traceback = child_traceback


def _how(code: int | None) -> str:
    if code is None:
        return "it did not exit"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code} without a result"


def _kill(proc: Any) -> None:
    with contextlib.suppress(Exception):
        proc.kill()
        proc.join(5)
