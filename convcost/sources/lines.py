"""Mappings that remember where they came from (no YAML needed to use them)."""

from __future__ import annotations

from typing import Any

__all__ = ["LineDict"]


class LineDict(dict):
    """A dict that remembers the 1-based line of itself and of each of its keys."""

    line: int | None = None
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int | None:
        """Line of ``key`` if known, else the line of the mapping itself."""
        return getattr(self, "key_lines", {}).get(key, self.line)
