"""The ``convcost`` command's first code: a Ctrl-C while the command is still starting (Python
importing click, rich or torch) ends it quietly with exit 130, never with a traceback. The
handler is installed before any other import; once the command's own handling is in place
(:func:`convcost.cli.main`), Ctrl-C is a ``KeyboardInterrupt`` again, which the command turns
into "interrupted" and exit 130 and which keeps finished rows."""

from __future__ import annotations

import contextlib
import os
import signal


def _quiet_interrupt(signum: int, frame: object) -> None:
    with contextlib.suppress(OSError):
        os.write(2, b"convcost: interrupted\n")
    os._exit(130)


def main() -> None:
    """Console-script entry point (``convcost``, ``python -m convcost``)."""
    previous = signal.signal(signal.SIGINT, _quiet_interrupt)
    from convcost import cli

    signal.signal(signal.SIGINT, previous)
    cli.main()
