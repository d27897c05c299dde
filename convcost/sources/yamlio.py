"""Safe YAML loading that keeps line numbers, rejects duplicate keys and defuses alias bombs.

The loader is a subclass of ``yaml.SafeLoader`` that only changes how mappings are built (to
remember each key's line): it constructs plain Python data, never arbitrary objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from convcost.errors import InputError
from convcost.sources.lines import LineDict

MAX_ALIASES = 64  # a spec has no need for more; a "billion laughs" document needs many
MAX_DEPTH = 64  # nesting deeper than this is refused before Python's recursion limit
MAX_BYTES = 8 * 1024 * 1024


class _Problem(yaml.YAMLError):
    """A problem our loader found, with its 1-based line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


class _LineSafeLoader(yaml.SafeLoader):
    """SafeLoader plus line numbers, duplicate-key errors and alias/depth limits."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise _Problem(mark.line + 1, f"more than {MAX_ALIASES} YAML aliases (*ref); "
                               "specs do not need them and this looks like an alias bomb")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Problem(mark.line + 1, f"nesting deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: _LineSafeLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise _Problem(key_node.start_mark.line + 1,
                           "a mapping key must be a plain value") from None
        if key in out:
            raise _Problem(key_node.start_mark.line + 1,
                           f"duplicate key {key!r} (first on line {out.key_lines[key]})")
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


_LineSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


_CLoader = getattr(yaml, "CSafeLoader", None)
if _CLoader is not None:
    class _LineCSafeLoader(_CLoader):  # type: ignore[misc,valid-type]
        """libyaml's parser and composer (about 3x faster), the same constructors: line numbers
        and duplicate keys. Alias and depth limits are checked on the composed node graph,
        before anything is constructed (an alias bomb is cheap until it is constructed)."""

    _LineCSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                     _construct_mapping)
else:  # pragma: no cover - PyYAML built without libyaml
    _LineCSafeLoader = None


def _check_graph(root: Any) -> None:
    """Alias and depth limits on a composed node graph (aliases are shared nodes there)."""
    seen: set[int] = set()
    aliases = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _Problem(node.start_mark.line + 1, f"nesting deeper than {MAX_DEPTH} levels")
        if id(node) in seen:
            aliases += 1
            if aliases > MAX_ALIASES:
                raise _Problem(node.start_mark.line + 1, f"more than {MAX_ALIASES} YAML aliases "
                               "(*ref); specs do not need them and this looks like an alias bomb")
            continue
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            seen.add(id(node))
            kids = node.value if isinstance(node, yaml.SequenceNode) else [
                x for kv in node.value for x in kv]
            stack.extend((k, depth + 1) for k in kids)


def _load(text: str) -> Any:
    if _LineCSafeLoader is None:
        return yaml.load(text, Loader=_LineSafeLoader)
    loader = _LineCSafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text safely; errors become one-line ``InputError`` naming ``source`` and line."""
    try:
        return _load(text)
    except _Problem as e:
        raise InputError(f"{source}:{e.line}: {e.message}") from e
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise InputError(f"{source}{line}: YAML syntax error: {what}") from e
    except yaml.YAMLError as e:
        raise InputError(f"{source}: YAML error: {e}") from e
    except RecursionError as e:
        raise InputError(f"{source}: YAML nesting too deep") from e


def read_text_file(path: str | Path, what: str = "file") -> str:
    """Read a UTF-8 text file (a regular file of at most 8 MiB), turning every OS/encoding
    problem into one ``InputError`` line."""
    from convcost.files import read_bounded

    p = Path(path)
    data = read_bounded(p, MAX_BYTES, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{p}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from e


def load_yaml_file(path: str | Path, what: str = "file") -> Any:
    """Read and parse a YAML file; an empty file is an error."""
    text = read_text_file(path, what)
    data = load_yaml_text(text, str(path))
    if data is None:
        raise InputError(f"{path}: empty {what}")
    return data
