"""Safe YAML loading that keeps line numbers, rejects duplicate keys and defuses alias bombs.

The loader is a subclass of ``yaml.SafeLoader`` that only changes how mappings are built (to
remember each key's line): it constructs plain Python data, never arbitrary objects. Its own
limits apply whatever the YAML library does (a scan of the text bounds flow nesting before the
parser sees it; the composed node graph bounds block nesting and aliases). A value that its
tag cannot build (``!!int eight``, ``!!bool maybe``, ``2024-13-45`` read as a date, a
5,000-digit integer) is one error naming the line and key, never a crash.
"""

from __future__ import annotations

import re
import sys
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
        self.keyed = False


def _tag_name(tag: str) -> str:
    return "!!" + tag.rsplit(":", 1)[-1] if tag.startswith("tag:yaml.org,2002:") else tag


class _CheckedConstruction:
    """Constructors whose failures are :class:`_Problem` lines (a value its tag cannot build,
    an impossible date, an integer beyond Python's digit limit)."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)  # type: ignore[misc]
        except (_Problem, yaml.YAMLError, RecursionError):
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, IndexError) as e:
            value = node.value if isinstance(node, yaml.ScalarNode) else type(node).__name__
            raise _Problem(node.start_mark.line + 1, f"{str(value)[:40]!r} is not a valid "
                           f"{_tag_name(node.tag)} ({_why(node.tag, e)})") from e


def _why(tag: str, e: Exception) -> str:
    if "Exceeds the limit" in str(e):
        return f"more than {sys.get_int_max_str_digits()} digits"
    if tag.endswith(":bool"):
        return "use true or false"
    if tag.endswith(":timestamp"):
        return f"not a date: {e}" if isinstance(e, ValueError) else "not a date"
    return str(e)[:80] if isinstance(e, ValueError) else type(e).__name__


class _LineSafeLoader(_CheckedConstruction, yaml.SafeLoader):
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
        try:
            out[key] = loader.construct_object(value_node, deep=True)
        except _Problem as e:
            if not e.keyed:  # name the innermost key once
                e.message, e.keyed = f"key {str(key)[:40]!r}: {e.message}", True
            raise
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


_LineSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


_CLoader = getattr(yaml, "CSafeLoader", None)
if _CLoader is not None:
    class _LineCSafeLoader(_CheckedConstruction, _CLoader):  # type: ignore[misc,valid-type]
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


_FLOW = re.compile(r"[\[\]{}'\"#\n\\]")


def _check_flow_depth(text: str) -> None:
    """Flow nesting (``[[[[...``) bounded on the text itself, before any parser sees it (the
    parser's own limits and messages vary between releases). Quoted scalars and comments are
    skipped; a bracket inside a plain scalar counts, which can only refuse a scalar with more
    than MAX_DEPTH nested brackets."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth, line, quote, comment, prev_end = 0, 1, "", False, 0
    for m in _FLOW.finditer(text):
        c, i = m.group(), m.start()
        if c == "\n":
            line, comment = line + 1, False
            continue
        if comment:
            continue
        if quote:
            if c == "\\" and quote == '"':
                prev_end = i + 2  # skip the escaped character
            elif c == quote and i >= prev_end:
                quote = ""
            continue
        before = text[i - 1] if i else "\n"
        if c in "'\"" and before in " \t\n[{,:-":
            quote, prev_end = c, i + 1
        elif c == "#" and before in " \t\n":
            comment = True
        elif c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _Problem(line, f"nesting deeper than {MAX_DEPTH} levels")
        elif c in "]}":
            depth = max(0, depth - 1)


def _load(text: str) -> Any:
    _check_flow_depth(text)
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
    except (RecursionError, MemoryError) as e:
        raise InputError(f"{source}: YAML nesting deeper than {MAX_DEPTH} levels") from e


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
