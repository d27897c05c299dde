"""Where convcost keeps its own files: the user cache directory (XDG base-directory rules)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$CONVCOST_CACHE_DIR``, else ``$XDG_CACHE_HOME/convcost``, else ``~/.cache/convcost``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG specification requires.
    """
    if os.environ.get("CONVCOST_CACHE_DIR"):
        return Path(os.environ["CONVCOST_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "convcost"
