"""Reading and writing files safely: bounded reads of regular files only, atomic writes.

- Reads refuse anything that is not a regular file (a FIFO would block forever, ``/dev/zero``
  would never end) and read at most ``limit`` bytes whatever ``st_size`` claims.
- Writes go to a temporary file in the destination's folder, are flushed to disk, and renamed
  over the destination: a reader sees the old file or the new one, never half of one, and a
  failed write (full disk, file-size limit) leaves the old file intact.
- Destinations are checked before long work (the folder exists and is writable).
- One rule for what a destination names: a symbolic link is followed, and the file it points to
  is replaced atomically (the link stays a link; a dangling link's target is created);
  ``/dev/stdout``, ``/dev/stderr`` and ``/dev/fd/N`` are written to that open stream, in place;
  a device or a FIFO (``/dev/null``, a named pipe) is written in place, not atomically.
  Nothing is ever written anywhere but where the path leads.

Every problem is one :class:`~convcost.errors.InputError` line naming the path.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from pathlib import Path

from convcost.errors import ConvcostError, InputError


def _why(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def regular_stat(path: str | Path, what: str = "file", *, error: type[ConvcostError] = InputError,
                 prefix: str = "", missing: str | None = None) -> os.stat_result:
    """``path``'s stat when it is a regular file; else one ``error`` line (``prefix`` first)
    saying what it is instead: missing, a directory, a FIFO (it would block a reader forever),
    a device, a socket."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise error(f"{prefix}{p}: no such {missing or what}") from None
    except OSError as e:
        raise error(f"{prefix}{p}: cannot read: {_why(e)}") from e
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{prefix}{p}: is a directory, expected a {what}")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise error(f"{prefix}{p}: is {kind}, expected a {what} (a regular file)")
    return st


def read_bounded(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes."""
    p = Path(path)
    st = regular_stat(p, what)
    if st.st_size > limit:
        raise InputError(f"{p}: {st.st_size} bytes is too large for a {what} (limit {limit})")
    try:
        with p.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise InputError(f"{p}: cannot read: {_why(e)}") from e
    if len(data) > limit:  # st_size lied (a file growing, a special file system)
        raise InputError(f"{p}: more than {limit} bytes: too large for a {what}")
    return data


_STREAMS = {"/dev/stdout": 1, "/dev/stderr": 2}


def stream_fd(path: str | Path) -> int | None:
    """The file descriptor that ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N`` or
    ``/proc/self/fd/N`` names, else None."""
    text = os.path.normpath(str(path))
    if text in _STREAMS:
        return _STREAMS[text]
    for prefix in ("/dev/fd/", "/proc/self/fd/"):
        if text.startswith(prefix) and text[len(prefix):].isdigit():
            return int(text[len(prefix):])
    return None


def resolve_destination(path: str | Path) -> Path:
    """Where a write to ``path`` lands: the target of a symbolic link (followed to the end),
    else ``path`` itself."""
    p = Path(path)
    return Path(os.path.realpath(p)) if p.is_symlink() else p


def _in_place(p: Path) -> bool:
    """A stream, device or FIFO: written where it is, not by replacing it."""
    if stream_fd(p) is not None:
        return True
    try:
        st = p.stat()
    except OSError:
        return False
    return not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode)


def check_destination(path: str | Path, what: str = "output") -> Path:
    """Refuse, before any work, a destination whose folder is missing or not writable, or that
    is a directory; return where the write will land (see the module docstring)."""
    named = Path(path)
    if _in_place(named):
        if stream_fd(named) is None and not os.access(named, os.W_OK):
            raise InputError(f"{named}: is not writable")
        return named
    p = resolve_destination(named)
    via = f" (the link {named} points there)" if p != named else ""
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise InputError(f"{p}: is a directory{via}; give a file name for the {what}")
    if not parent.is_dir():
        raise InputError(f"{p}: the folder {parent} does not exist{via}; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{p}: the folder {parent} is not writable{via}")
    if p.exists() and not p.is_file():
        raise InputError(f"{p}: exists and is not a regular file; cannot write the {what} there")
    return p


def _write_in_place(p: Path, data: bytes, what: str) -> None:
    fd = stream_fd(p)
    try:
        if fd is not None:
            import sys

            for s in (sys.stdout, sys.stderr):  # what was printed before comes first
                with contextlib.suppress(OSError, ValueError):
                    s.flush()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        else:
            with p.open("wb") as f:
                f.write(data)
    except OSError as e:
        raise InputError(f"{p}: cannot write the {what}: {_why(e)}") from e


def atomic_write_text(path: str | Path, text: str, what: str = "output") -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: a temporary file in the same folder,
    flushed, then renamed over ``path``. On failure ``path`` is untouched."""
    atomic_write_bytes(path, text.encode("utf-8"), what)


def atomic_write_bytes(path: str | Path, data: bytes, what: str = "output") -> None:
    p = check_destination(path, what)
    if _in_place(p):
        _write_in_place(p, data, what)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):  # keep the old file's permissions when replacing
            os.chmod(tmp, p.stat().st_mode & 0o777 if p.exists() else 0o644)
        os.replace(tmp, p)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise InputError(f"{p}: cannot write the {what}: {_why(e)}; the previous file, if "
                         "any, is unchanged") from e
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def append_text(path: str | Path, text: str, what: str = "summary") -> None:
    """Append to a file that others also append to (``$GITHUB_STEP_SUMMARY``): one write."""
    p = Path(path)
    try:
        with p.open("a", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise InputError(f"{p}: cannot append the {what}: {_why(e)}") from e


@contextlib.contextmanager
def quiet_fds():  # type: ignore[no-untyped-def]
    """Silence file descriptors 1 and 2 inside the block: native code that prints (the
    TorchScript exporter's IR graph on a failure, HiGHS's MIP notes) would land in a report
    printed on stdout."""
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no such descriptors (embedded use): nothing to silence
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
