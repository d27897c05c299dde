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
for timing).

The model's process never outlives convcost. The child convcost starts is a small supervisor
that leads a process group of its own and forks the model's process into it; it ends the
whole group (the model's process and anything the model forked) the moment convcost is gone,
SIGKILL included (``PR_SET_PDEATHSIG`` on Linux, a watch on the parent everywhere). SIGTERM and
Ctrl-C received by convcost are passed on to the group; a model that ignores them (or does not
hand its finished rows back) within ``GRACE_S`` seconds is killed, and convcost exits 143 or
130. When the work is done, the group is killed, so a helper the model forked cannot hold
convcost's output streams open.

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
from collections.abc import Callable, Iterator
from typing import Any

from convcost.errors import ConvcostError, ExitStatus, ModelError, first_line

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
            msg = ("internal", first_line(e))
    try:
        conn.send(msg)
    except Exception as e:  # a result that cannot be pickled is a bug in convcost
        with contextlib.suppress(Exception):
            conn.send(("internal", f"cannot send the result back: {first_line(e)}"))
    finally:
        with contextlib.suppress(Exception):
            conn.close()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(0)


GRACE_S = 5.0  # after SIGTERM/Ctrl-C, how long the model's process may take to hand back rows


def set_parent_death_signal(sig: int) -> bool:
    """Linux: ``sig`` is delivered to this process when its parent dies (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return False


def _watch_parent(parent: int, then: Callable[[], None]) -> None:
    """Where PR_SET_PDEATHSIG is missing: a thread that calls ``then`` once the parent is gone."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        then()

    threading.Thread(target=watch, name="convcost-parent-watch", daemon=True).start()


def _kill_own_group() -> None:
    with contextlib.suppress(OSError):
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(1)


def _supervise(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], parent: int) -> None:
    """The child convcost starts: it leads a process group of its own, forks the process that
    runs the model's code into it, and ends the whole group (the model's process and whatever
    it forked) as soon as convcost is gone, whatever ended it (SIGKILL included): Linux tells it
    at once (PR_SET_PDEATHSIG), and it watches its parent everywhere. Only convcost's code runs
    here, so the model cannot change how it reacts."""
    if hasattr(os, "setpgid"):
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
    if not hasattr(os, "fork"):  # pragma: no cover - Windows: no groups, no supervision
        _child_main(conn, fn, args)
    for sig in (signal.SIGINT, signal.SIGTERM):  # convcost signals the group; the model acts
        signal.signal(sig, signal.SIG_IGN)  # (set before the fork: no window where it dies)
    me = os.getpid()
    pid = os.fork()
    if pid == 0:  # the model's process: dies with its supervisor; sets its own handlers
        if not set_parent_death_signal(signal.SIGKILL):
            _watch_parent(me, lambda: os._exit(1))
        if os.getppid() != me:
            os._exit(1)
        _child_main(conn, fn, args)
    signal.signal(signal.SIGUSR1, lambda *_: _kill_own_group())
    set_parent_death_signal(signal.SIGUSR1)
    status = None
    while status is None:
        if os.getppid() != parent:
            _kill_own_group()
        try:
            done, st = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # pragma: no cover - reaped elsewhere
            break
        if done:
            status = os.waitstatus_to_exitcode(st)
            break
        time.sleep(0.05)
    with contextlib.suppress(Exception):
        conn.send(("ended", status))
    os._exit(0)


def signal_group(proc: Any, sig: int) -> None:
    """``sig`` to the model's process group (its supervisor ignores SIGINT/SIGTERM)."""
    if not proc.pid:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):  # the group is not formed yet, or gone
        with contextlib.suppress(OSError):
            os.kill(proc.pid, sig)
    except (OSError, AttributeError):  # pragma: no cover - no process groups
        with contextlib.suppress(OSError):
            os.kill(proc.pid, sig)


def _end(proc: Any) -> None:
    """The supervisor has a moment to leave; then the whole group is killed (a helper the
    model forked would otherwise hold convcost's stderr and outlive the run)."""
    proc.join(2)
    signal_group(proc, signal.SIGKILL)
    proc.join(5)


class _Wait:
    """The parent's view of a running child: what it does, until when, and signals received."""

    def __init__(self, proc: Any, timeout_s: float) -> None:
        self.proc, self.timeout_s = proc, timeout_s
        self.current, self.deadline = "loading the model", time.monotonic() + timeout_s
        self.signalled: int | None = None  # SIGINT or SIGTERM passed on to the child
        self.grace_until = float("inf")
        self.ended: int | None = None  # the model process's exit code, from the supervisor

    def stop(self, sig: int) -> None:
        """Pass ``sig`` on; a second one, or a child that ignores it for GRACE_S, is killed."""
        if sig == signal.SIGTERM:
            TERMINATED["flag"] = True
        if self.signalled is not None:
            self.grace_until = 0.0
        self.signalled = sig
        signal_group(self.proc, sig)
        self.grace_until = min(self.grace_until, time.monotonic() + GRACE_S)

    def gave_up(self) -> bool:
        if time.monotonic() > self.grace_until:
            signal_group(self.proc, signal.SIGKILL)
            return True
        return False


def _receive(conn: Any, w: _Wait, label: str) -> Any:
    """Messages until a result (None when the child ended without one)."""
    while True:
        try:
            ready = conn.poll(0.2)
        except KeyboardInterrupt:  # Ctrl-C: the model's group is not the terminal's
            w.stop(signal.SIGINT)
            continue
        if ready:
            try:
                got = conn.recv()
            except (EOFError, OSError):
                return None  # the child ended without a result
            if got[0] == "phase":
                w.current = got[1]
                w.deadline = time.monotonic() + (got[2] if got[2] is not None else w.timeout_s)
                continue
            if got[0] == "ended":
                w.ended = got[1]
                return None
            return got
        if w.signalled is not None and w.gave_up():
            raise Terminated() if w.signalled == signal.SIGTERM else KeyboardInterrupt()
        if not w.proc.is_alive():
            if conn.poll(0.05):
                continue
            return None
        if time.monotonic() > w.deadline:
            signal_group(w.proc, signal.SIGKILL)
            raise ModelError(f"{label}: the model's code did not finish {w.current} within "
                             f"{w.timeout_s if 'timing' not in w.current else 'its time'} s "
                             "(an endless loop, or a far too large input); raise --timeout "
                             "if it needs longer")


def _run_child(fn: Callable[..., Any], args: tuple[Any, ...], label: str,
               timeout_s: float, start: str = "fork") -> Any:
    ctx = mp.get_context(start)
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    proc = ctx.Process(target=_supervise, args=(child_conn, fn, args, os.getpid()), daemon=True)
    w = _Wait(proc, timeout_s)
    old_term = signal.signal(signal.SIGTERM, lambda *_: w.stop(signal.SIGTERM))
    proc.start()
    if hasattr(os, "setpgid"):
        with contextlib.suppress(OSError):
            os.setpgid(proc.pid, proc.pid)  # also here: no window where a signal misses it
    child_conn.close()
    try:
        msg = _receive(parent_conn, w, label)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        parent_conn.close()
        _end(proc)
    return _outcome(msg, w, label)


def _outcome(msg: Any, w: _Wait, label: str) -> Any:
    if msg is None:
        if w.signalled is not None:
            raise Terminated() if w.signalled == signal.SIGTERM else KeyboardInterrupt()
        code = w.ended if w.ended is not None else w.proc.exitcode
        raise ModelError(f"{label}: the model's code ended the process while {w.current} "
                         f"({_how(code)}); nothing it computed is reported")
    kind = msg[0]
    if kind == "ok":
        return msg[1]
    if kind == "interrupted":
        if msg[1] or w.signalled == signal.SIGTERM:
            raise Terminated()
        raise KeyboardInterrupt()
    if kind == "error":
        cls, text, status = msg[1], msg[2], msg[3]
        err = cls.__new__(cls)
        Exception.__init__(err, text)
        err.exit_status = ExitStatus(status)
        raise err
    if kind == "exit":
        raise ModelError(f"{label}: the model's code called sys.exit({msg[1]!r}) while "
                         f"{w.current}; nothing it computed is reported")
    if w.signalled is not None:
        raise KeyboardInterrupt()
    raise InternalError(msg[1])


class InternalError(RuntimeError):
    """A bug in convcost, raised in the child (its first line; rerun in-process with
    ``CONVCOST_ISOLATION=off --traceback`` for the whole traceback)."""


def _how(code: int | None) -> str:
    if code is None:
        return "it did not exit"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code} without a result"



