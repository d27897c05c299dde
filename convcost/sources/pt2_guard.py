"""Check a ``torch.export`` archive (``.pt2``) before ``torch.export.load`` sees it.

An exported program is data, but torch's loader turns parts of it into code:

- symbolic shape expressions (``expr_str``) are parsed by ``sympy.sympify``, which evaluates
  Python: ``__import__('os').system(...)`` runs;
- the input guards (``guards_code``) are compiled with ``exec`` into the ``_guards_fn`` module;
- graph node targets are resolved by name (``torch.save``, ``torch.hub.load`` would resolve);
- an AOTInductor payload (``data/aotinductor/.../*.so``) is a shared library: loading it runs
  its constructors.

So before loading, every one of them is checked against a strict grammar (Python's ``ast`` on
the text, an allowlist of names and node types; nothing is evaluated), the archive's members
are checked (no absolute or ``..`` paths, no shared libraries, no AOTInductor payload, no
zip bombs), and anything else is refused with one line naming what and where.
"""

from __future__ import annotations

import ast
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from convcost.errors import ModelError

MAX_JSON_BYTES = 256 * 1024 * 1024
MAX_EXPR_CHARS = 20_000
MAX_RATIO = 200  # uncompressed / compressed, for members larger than 64 MiB
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# sympy classes and torch.utils._sympy functions that appear in srepr'd shape expressions
SYMPY_CALLS = frozenset({
    "Symbol", "Dummy", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min",
    "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan",
    "LessThan", "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "Xor", "Piecewise",
    "ExprCondPair", "Tuple", "floor", "ceiling", "sqrt", "FloorDiv", "CleanDiv", "CeilDiv",
    "PythonMod", "IntTrueDiv", "FloatTrueDiv", "FloatPow", "PowByNatural", "CeilToInt",
    "FloorToInt", "TruncToInt", "TruncToFloat", "RoundToInt", "RoundDecimal", "ToFloat",
    "Identity", "ModularIndexing", "Where", "LShift", "RShift", "IsNonOverlappingAndDenseIndicator",
    "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor",
    "OpaqueUnaryFn_sqrt", "OpaqueUnaryFn_exp", "OpaqueUnaryFn_log", "OpaqueUnaryFn_cos",
    "OpaqueUnaryFn_sin", "OpaqueUnaryFn_tan",
})
SYMPY_NAMES = frozenset({"oo", "zoo", "nan", "true", "false", "S", "pi", "E", "I",
                         "Infinity", "NegativeInfinity", "BooleanTrue", "BooleanFalse", "True",
                         "False", "None"})
ASSUMPTIONS = frozenset({"positive", "negative", "nonnegative", "nonpositive", "integer", "real",
                         "finite", "nonzero", "zero", "even", "odd", "commutative", "evaluate",
                         "rational", "prime"})
GUARD_CALLS = SYMPY_CALLS | {"int", "float", "abs", "max", "min", "len", "round", "bool"}
GUARD_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
MATH_FUNCS = frozenset({"floor", "ceil", "trunc", "sqrt", "log", "exp", "log2", "isfinite",
                        "inf"})
TARGET_NAMESPACES = ("torch.ops.aten.", "torch.ops.prims.", "torch.ops.higher_order.",
                     "torch.ops.quantized.", "torch.ops.quantized_decomposed.")
_SAFE_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
                ast.BitAnd, ast.BitOr, ast.BitXor, ast.LShift, ast.RShift)
_SAFE_CMPOPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


class _Refused(Exception):
    pass


def _parse(text: str, what: str) -> ast.Expression:
    if not isinstance(text, str) or len(text) > MAX_EXPR_CHARS:
        raise _Refused(f"{what} is not a string of at most {MAX_EXPR_CHARS} characters")
    try:
        return ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise _Refused(f"{what} is not an expression ({e.msg})") from e


def _check_common(node: ast.AST, what: str) -> bool:
    """Node types both grammars accept (True when handled)."""
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, str) and not _IDENT.fullmatch(v):
            raise _Refused(f"{what}: the string {v!r} is not a plain symbol name")
        if not isinstance(v, (int, float, str, bool, type(None))):
            raise _Refused(f"{what}: constant {type(v).__name__} is not allowed")
        return True
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd, ast.Not, ast.Invert)):
            raise _Refused(f"{what}: operator {type(node.op).__name__} is not allowed")
        return True
    if isinstance(node, ast.BinOp):
        if not isinstance(node.op, _SAFE_BINOPS):
            raise _Refused(f"{what}: operator {type(node.op).__name__} is not allowed")
        return True
    if isinstance(node, ast.Compare):
        if not all(isinstance(o, _SAFE_CMPOPS) for o in node.ops):
            raise _Refused(f"{what}: a comparison other than ==, !=, <, <=, >, >=")
        return True
    return isinstance(node, (ast.BoolOp, ast.And, ast.Or, ast.Expression, ast.Load,
                             ast.operator, ast.cmpop, ast.unaryop, ast.boolop, ast.Tuple))


def check_sym_expr(text: str, where: str) -> None:
    """A srepr'd sympy expression: calls of known sympy/torch classes on numbers, symbol
    names and assumption keywords; nothing else."""
    tree = _parse(text, where)
    for node in ast.walk(tree):
        if _check_common(node, where):
            continue
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in SYMPY_CALLS:
                raise _Refused(f"{where}: call of {ast.unparse(node.func)!r} is not a shape "
                               "expression function")
            for kw in node.keywords:
                if kw.arg not in ASSUMPTIONS or not isinstance(kw.value, ast.Constant) or \
                        not isinstance(kw.value.value, bool):
                    raise _Refused(f"{where}: keyword {kw.arg!r} is not a symbol assumption")
        elif isinstance(node, ast.keyword):
            continue
        elif isinstance(node, ast.Name):
            if node.id not in SYMPY_CALLS and node.id not in SYMPY_NAMES:
                raise _Refused(f"{where}: name {node.id!r} is not allowed in a shape expression")
        else:
            raise _Refused(f"{where}: {type(node).__name__} is not allowed in a shape "
                           "expression")


def check_guard(text: str, where: str) -> None:
    """An input guard such as ``L['x'].size()[0] <= 64``: sizes and strides of the inputs,
    numbers, comparisons, arithmetic and a few known functions."""
    tree = _parse(text, where)
    for node in ast.walk(tree):
        if _check_common(node, where):
            continue
        if isinstance(node, ast.Name):
            if node.id not in ("L", "math") and node.id not in GUARD_CALLS and \
                    node.id not in SYMPY_NAMES:
                raise _Refused(f"{where}: name {node.id!r} is not allowed in a guard")
        elif isinstance(node, ast.Subscript):
            if not isinstance(node.slice, (ast.Constant, ast.UnaryOp)):
                raise _Refused(f"{where}: only constant subscripts are allowed in a guard")
        elif isinstance(node, ast.Attribute):
            base_math = isinstance(node.value, ast.Name) and node.value.id == "math"
            if not (node.attr in GUARD_METHODS or (base_math and node.attr in MATH_FUNCS)):
                raise _Refused(f"{where}: attribute {node.attr!r} is not allowed in a guard")
        elif isinstance(node, ast.Call):
            f = node.func
            ok = (isinstance(f, ast.Name) and f.id in GUARD_CALLS) or (
                isinstance(f, ast.Attribute) and (f.attr in GUARD_METHODS or (
                    isinstance(f.value, ast.Name) and f.value.id == "math"
                    and f.attr in MATH_FUNCS)))
            if not ok or node.keywords:
                raise _Refused(f"{where}: call of {ast.unparse(f)!r} is not allowed in a guard")
        else:
            raise _Refused(f"{where}: {type(node).__name__} is not allowed in a guard")


def check_target(target: Any, where: str) -> None:
    """Node targets: ATen and other torch.ops operators, _operator and math functions."""
    if not isinstance(target, str):
        raise _Refused(f"{where}: target {target!r} is not a string")
    if target.startswith(TARGET_NAMESPACES):
        rest = target.split(".")
        if all(_IDENT.fullmatch(p) for p in rest):
            return
    m = re.fullmatch(r"(_operator|math)\.([A-Za-z_][A-Za-z0-9_]*)", target)
    if m and not m.group(2).startswith("_"):
        return
    raise _Refused(f"{where}: target {target!r} is not an ATen (torch.ops) operator; convcost "
                   "loads only programs made of operators")


def _walk(obj: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) of every dict entry in a JSON document."""
    stack = [(obj, path)]
    while stack:
        o, p = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                yield f"{p}.{k}" if p else str(k), str(k), v
                if isinstance(v, (dict, list)):
                    stack.append((v, f"{p}.{k}" if p else str(k)))
        elif isinstance(o, list):
            for i, v in enumerate(o):
                if isinstance(v, (dict, list)):
                    stack.append((v, f"{p}[{i}]"))


def check_program(doc: Any, member: str) -> None:
    """Every shape expression, guard and node target of one serialized program."""
    if not isinstance(doc, dict):
        raise _Refused(f"{member}: not a serialized exported program")
    for i, g in enumerate(doc.get("guards_code") or []):
        check_guard(g, f"{member}: guards_code[{i}]")
    for k in (doc.get("range_constraints") or {}):
        if not _IDENT.fullmatch(str(k)):
            raise _Refused(f"{member}: range_constraints key {k!r} is not a symbol name")
    for path, key, value in _walk(doc):
        if key == "expr_str":
            check_sym_expr(value, f"{member}: {path}")
        elif key == "target" and ".graph." in f".{path}":
            check_target(value, f"{member}: {path}")
        elif key == "guards_code" and path != "guards_code" and isinstance(value, list):
            for i, g in enumerate(value):
                check_guard(g, f"{member}: {path}[{i}]")


def check_archive(path: str | Path) -> None:
    """Refuse (:class:`ModelError`) a ``.pt2`` that carries code; return quietly otherwise."""
    p = Path(path)
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelError(f"{p}: not a torch.export archive (a zip file): {e}") from e
    with zf:
        infos = zf.infolist()
        tops = {i.filename.split("/", 1)[0] for i in infos}
        for i in infos:
            name = i.filename
            if name.startswith("/") or "\\" in name or any(x == ".." for x in name.split("/")):
                raise ModelError(f"{p}: member {name!r} has an absolute or '..' path")
            low = name.lower()
            if "/aotinductor/" in f"/{low}" or low.endswith((".so", ".dll", ".dylib", ".pyd")):
                raise ModelError(f"{p}: member {name!r} is compiled code (an AOTInductor payload "
                                 "or a shared library); convcost loads only the exported program, "
                                 "never native code from an archive")
            if i.file_size > 64 * 2**20 and i.compress_size and \
                    i.file_size / i.compress_size > MAX_RATIO:
                raise ModelError(f"{p}: member {name!r} expands {i.file_size // i.compress_size}x "
                                 "(a zip bomb?)")
        if len(tops) != 1:
            raise ModelError(f"{p}: not a torch.export archive (members under {len(tops)} "
                             "top-level folders)")
        programs = [i for i in infos if re.fullmatch(r"[^/]+/models/[^/]+\.json", i.filename)]
        if not programs:
            raise ModelError(f"{p}: no exported program (models/*.json) in the archive")
        for i in programs:
            if i.file_size > MAX_JSON_BYTES:
                raise ModelError(f"{p}: {i.filename} is larger than {MAX_JSON_BYTES} bytes")
            try:
                doc = json.loads(zf.read(i).decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise ModelError(f"{p}: {i.filename} is not valid JSON: {e}") from e
            try:
                check_program(doc, i.filename)
            except _Refused as e:
                raise ModelError(f"{p}: refused: {e} (the archive would run code when loaded)") \
                    from e
