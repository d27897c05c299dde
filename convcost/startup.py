"""Start-up of a convcost process: the garbage collector is off while torch and the other heavy
modules are imported (millions of objects, nothing to collect: a full pass there costs
~120 ms), then :func:`settle` freezes what exists, so later passes never scan it, and turns it
back on for the work."""

from __future__ import annotations

import gc


def begin() -> None:
    gc.disable()


def settle() -> None:
    """Start-up is over (the command's imports, the model built). Idempotent."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()
