"""Mappings that remember where they came from (no YAML needed to use them)."""

from __future__ import annotations

from typing import Any

__all__ = ["FileValidator", "LineDict", "line_at"]


class LineDict(dict):
    """A dict that remembers the 1-based line of itself and of each of its keys."""

    line: int | None = None
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int | None:
        """Line of ``key`` if known, else the line of the mapping itself."""
        return getattr(self, "key_lines", {}).get(key, self.line)


def line_at(node: Any, key: Any = None) -> int | None:
    """The 1-based line of ``key`` in ``node`` (of ``node`` itself without a key), when ``node``
    was read from a file; None otherwise."""
    if not isinstance(node, LineDict):
        return None
    return node.line_of(key) if key is not None else node.line


class FileValidator:
    """What every line-numbered validator of a YAML file shares (specs, budgets): the file it
    reads, the line of a node or key, the first key a mapping may not have. Subclasses build
    their own one-line error type from these."""

    def __init__(self, file: Any) -> None:
        self.file = file

    @staticmethod
    def line(node: Any, key: Any = None) -> int | None:
        return line_at(node, key)

    @staticmethod
    def unknown_key(d: dict, allowed: tuple[str, ...]) -> Any:
        """The first key of ``d`` not in ``allowed`` (None when every key is allowed)."""
        return next((k for k in d if k not in allowed), None)
