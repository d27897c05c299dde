"""Check a ``torch.export`` archive (``.pt2``) before ``torch.export.load`` sees it.

An exported program is data, but torch's loader turns parts of it into code:

- symbolic shape expressions (``expr_str``) are parsed by ``sympy.sympify``, which evaluates
  Python: ``__import__('os').system(...)`` runs;
- the input guards (``guards_code``) are compiled with ``exec`` into the ``_guards_fn`` module;
- graph node targets are resolved by name (``torch.save``, ``torch.hub.load`` would resolve);
- an AOTInductor payload (``data/aotinductor/.../*.so``) is a shared library: loading it runs
  its constructors.

- every name of the program (parameters, buffers, constants, module paths, node and argument
  names) is written into generated Python by FX (``getattr(self, "<name>")``): a quote in a
  name is code;
- a weight record whose metadata claims more elements than it stores is zero-filled to the
  claimed size (an 8 KB archive can ask for 16 GB).

So before loading, every one of them is checked against a strict grammar (Python's ``ast`` on
the text, an allowlist of names and node types, bounded numbers and exponents; nothing is
evaluated), every name against a dotted-name grammar, every string for control characters,
every tensor's claimed size against its stored bytes, and the archive's members themselves (no
absolute or ``..`` paths, no shared libraries, no AOTInductor payload, no zip bombs, no
encrypted or unknown compression, every CRC). Anything else is refused with one line naming
what and where (:class:`~convcost.errors.ModelError`, exit 3).
"""

from __future__ import annotations

import ast
import functools
import json
import math
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from convcost.errors import ModelError

MAX_JSON_BYTES = 256 * 1024 * 1024
MAX_EXPR_CHARS = 20_000
MAX_RATIO = 200  # uncompressed / compressed, for members larger than 64 MiB
MAX_INT = 2**63  # every integer of a program (sizes, hints, ranges) fits an int64
MAX_EXPONENT = 64  # |e| of one power in a shape expression or guard
MAX_POWER_CHAIN = 4096  # product of the exponents of nested powers
MAX_EXPR_NODES = 2_000  # syntax nodes of one expression
MAX_CALL_ARGS = 64  # arguments of one call (sympy's Max/Min are quadratic in them)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A name that FX writes into generated code: dotted parts of ASCII letters, digits, '_' and
# '-' (ModuleDict keys such as 'conv-1' and Sequential indices such as '0' are fine; quotes,
# backslashes, spaces and control characters are not).
_NAME = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")
_CLASS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|<locals>))*")
# keys whose string value (or list of strings) is a name in the program
NAME_KEYS = frozenset({"name", "as_name", "parameter_name", "buffer_name",
                       "tensor_constant_name", "custom_obj_name", "fqn", "user_input_name",
                       "path_name"})
NAME_LIST_KEYS = frozenset({"forward_arg_names", "input_names", "output_names", "field_names"})
# keys of these mappings are names too
NAMED_MAPPINGS = frozenset({"tensor_values", "sym_int_values", "sym_bool_values",
                            "sym_float_values", "custom_obj_values", "config"})
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029\x85]")

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
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise _Refused(f"{what} is not an expression ({e.msg})") from e
    except (ValueError, RecursionError, MemoryError) as e:  # a 5,000-digit literal, deep nesting
        raise _Refused(f"{what} is not an expression ({type(e).__name__})") from e
    _check_bounds(tree, what)
    return tree


def _literal_int(node: ast.AST) -> int | None:
    """The value of ``5``, ``-5``, ``Integer(5)`` or ``Integer(-5)``, else None."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal_int(node.operand)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and \
            not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
            node.func.id == "Integer" and len(node.args) == 1 and not node.keywords:
        return _literal_int(node.args[0])
    return None


_POWERS = ("Pow", "PowByNatural", "FloatPow", "LShift", "RShift")


def _exponent(node: ast.AST) -> ast.AST | None:
    """The exponent (or shift) of a power node, else None."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Pow, ast.LShift, ast.RShift)):
        return node.right
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
            node.func.id in _POWERS and len(node.args) == 2:
        return node.args[1]
    return None


def _check_bounds(tree: ast.AST, what: str) -> None:
    """Numbers an evaluator can finish with: integers within int64, finite floats, at most
    MAX_EXPR_NODES nodes and MAX_CALL_ARGS arguments a call, every exponent or shift a literal
    integer of magnitude <= MAX_EXPONENT, nested powers multiplying to <= MAX_POWER_CHAIN
    (``10 ** 10 ** 9`` would never finish)."""
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]
    while stack:
        node, chain = stack.pop()
        count += 1
        if count > MAX_EXPR_NODES:
            raise _Refused(f"{what}: more than {MAX_EXPR_NODES} terms")
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and \
                not isinstance(node.value, bool):
            if isinstance(node.value, float) and not math.isfinite(node.value):
                raise _Refused(f"{what}: the number {node.value!r} is not finite")
            if abs(node.value) > MAX_INT:
                raise _Refused(f"{what}: the number {node.value!r:.40} is larger than 2**63")
        if isinstance(node, ast.Call) and len(node.args) > MAX_CALL_ARGS:
            raise _Refused(f"{what}: a call with more than {MAX_CALL_ARGS} arguments")
        exp = _exponent(node)
        if exp is not None:
            e = _literal_int(exp)
            if e is None or abs(e) > MAX_EXPONENT:
                raise _Refused(f"{what}: an exponent or shift must be an integer of at most "
                               f"{MAX_EXPONENT}, not {ast.unparse(exp)[:40]!r}")
            chain *= max(abs(e), 1)
            if chain > MAX_POWER_CHAIN:
                raise _Refused(f"{what}: nested powers multiply to more than "
                               f"{MAX_POWER_CHAIN}")
        stack.extend((child, chain) for child in ast.iter_child_nodes(node))


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


def _check_name(value: Any, where: str, allow_empty: bool = False) -> None:
    if not isinstance(value, str) or not (_NAME.fullmatch(value) or (allow_empty and value == "")):
        raise _Refused(f"{where}: the name {str(value)[:60]!r} is not a dotted name of letters, "
                       "digits, '_' and '-'")


def _check_module_stack(value: Any, where: str) -> None:
    """``key,path,class;key,path,class``: module paths and class names only."""
    if not isinstance(value, str):
        raise _Refused(f"{where}: not a module stack")
    for entry in value.split(";") if value else []:
        parts = entry.split(",")
        if len(parts) != 3:
            raise _Refused(f"{where}: the entry {entry[:60]!r} is not key,path,class")
        key, path, cls = parts
        _check_name(key, where)
        _check_name(path, where, allow_empty=True)
        if not _CLASS.fullmatch(cls):
            raise _Refused(f"{where}: the class {cls[:60]!r} is not a dotted class name")


def _check_names_and_values(doc: Any, member: str) -> None:
    """Every name of the program against the name grammar, every string free of control
    characters (FX writes metadata such as stack traces into generated code as comments; a
    carriage return would end the comment), every integer within int64."""
    stack: list[tuple[Any, str, str]] = [(doc, "", "")]
    while stack:
        o, path, key = stack.pop()
        where = f"{member}: {path or '(top)'}"
        if isinstance(o, dict):
            named = key in NAMED_MAPPINGS
            for k, v in o.items():
                if named:
                    _check_name(k, f"{where} key")
                elif isinstance(k, str) and _CONTROL.search(k):
                    raise _Refused(f"{where}: a key holds control characters")
                stack.append((v, f"{path}.{k}" if path else str(k), str(k)))
        elif isinstance(o, list):
            for i, v in enumerate(o):
                stack.append((v, f"{path}[{i}]", f"{key}[]" if key in NAME_LIST_KEYS else key))
        elif isinstance(o, str):
            if _CONTROL.search(o):
                raise _Refused(f"{where}: the text holds control characters")
            if key in NAME_KEYS:
                _check_name(o, where, allow_empty=key in ("fqn", "name"))
            elif key.endswith("[]"):
                if not _IDENT.fullmatch(o):
                    raise _Refused(f"{where}: {o[:60]!r} is not a Python identifier")
            elif key == "nn_module_stack":
                _check_module_stack(o, where)
        elif isinstance(o, int) and not isinstance(o, bool) and abs(o) > MAX_INT:
            raise _Refused(f"{where}: the integer {str(o)[:40]}... is larger than 2**63")


def check_program(doc: Any, member: str) -> None:
    """Every name, shape expression, guard and node target of one serialized program."""
    if not isinstance(doc, dict):
        raise _Refused(f"{member}: not a serialized exported program")
    _check_names_and_values(doc, member)
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


@functools.cache
def _element_sizes() -> dict[int, int]:
    """Bytes per element of each serialized dtype code (torch's own table), built once."""
    try:
        import torch
        from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE
    except ImportError:  # pragma: no cover - torch always has it
        return {}
    import warnings

    with warnings.catch_warnings():  # "ComplexHalf support is experimental"
        warnings.simplefilter("ignore", UserWarning)
        return {int(k): torch.empty(0, dtype=d).element_size()
                for k, d in _SERIALIZE_TO_TORCH_DTYPE.items()}


def _element_bytes(code: Any) -> int | None:
    """Bytes per element of a serialized dtype code, None if unknown."""
    if not isinstance(code, int) or isinstance(code, bool):
        return None
    return _element_sizes().get(code)


def _ints(values: Any, where: str) -> list[int]:
    """Concrete sizes/strides (``[{"as_int": 4}, ...]``); a symbolic one is refused."""
    if not isinstance(values, list):
        raise _Refused(f"{where}: not a list of sizes")
    out = []
    for v in values:
        n = v.get("as_int") if isinstance(v, dict) else None
        if not isinstance(n, int) or isinstance(n, bool):
            raise _Refused(f"{where}: a stored tensor's size must be a concrete integer")
        out.append(n)
    return out


def claimed_bytes(meta: Any, where: str) -> int:
    """The storage bytes a stored tensor's metadata asks for: (offset + sum((size-1)*stride)
    + 1) elements, 0 for an empty tensor."""
    if not isinstance(meta, dict):
        raise _Refused(f"{where}: no tensor metadata")
    sizes = _ints(meta.get("sizes"), where)
    strides = _ints(meta.get("strides"), where)
    off = meta.get("storage_offset")
    offset = _ints([off], where)[0] if off is not None else 0
    itemsize = _element_bytes(meta.get("dtype"))
    if itemsize is None:
        raise _Refused(f"{where}: unknown dtype {meta.get('dtype')!r}")
    if len(sizes) != len(strides) or any(x < 0 for x in [*sizes, *strides, offset]):
        raise _Refused(f"{where}: sizes, strides and offset must be non-negative and match")
    if any(x == 0 for x in sizes):
        return 0
    return (offset + sum((n - 1) * st for n, st in zip(sizes, strides, strict=True)) + 1) * itemsize


def _check_payloads(zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], top: str) -> int:
    """Each stored tensor's claimed size against its record (torch zero-fills an empty record
    to the claimed size); the total bytes of the records, for the memory guard."""
    total = 0
    configs = [n for n in infos if re.fullmatch(
        rf"{re.escape(top)}/data/(weights|constants)/[^/]+_config\.json", n)]
    for cname in configs:
        folder = cname.rsplit("/", 1)[0]
        doc = _read_json(zf, infos[cname])
        check_program_config(doc, cname)
        for fqn, entry in (doc.get("config") or {}).items():
            where = f"{cname}: {fqn}"
            record = infos.get(f"{folder}/{entry.get('path_name')}")
            stored = record.file_size if record is not None else 0
            meta = entry.get("tensor_meta")
            need = claimed_bytes(meta, where) if meta is not None or not entry.get("use_pickle") \
                else 0
            if need > stored:
                raise _Refused(f"{where}: the metadata claims {need} bytes but the archive stores "
                               f"{stored} (torch would allocate the difference)")
    for cname in configs:  # each record once, however many tensors view it
        folder = cname.rsplit("/", 1)[0]
        total += sum(i.file_size for n, i in infos.items()
                     if n.startswith(folder + "/") and not n.endswith(".json"))
    return total


def check_program_config(doc: Any, member: str) -> None:
    """A weights or constants config: ``{"config": {fqn: {path_name, tensor_meta, ...}}}``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise _Refused(f"{member}: not a payload config")
    _check_names_and_values(doc, member)
    for fqn, entry in doc["config"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("path_name"), str):
            raise _Refused(f"{member}: {fqn}: no path_name")


def _read_json(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    if info.file_size > MAX_JSON_BYTES:
        raise _Refused(f"{info.filename} is larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(zf.read(info).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise _Refused(f"{info.filename} is not valid JSON: {str(e)[:120]}") from e
    except RecursionError as e:
        raise _Refused(f"{info.filename} is JSON nested too deep") from e


def _check_members(p: Path, infos: list[zipfile.ZipInfo]) -> str:
    """Paths, native code, encryption, compression and bombs; the archive's top folder."""
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
        if i.flag_bits & 0x1:
            raise ModelError(f"{p}: member {name!r} is encrypted; a torch.export archive never is")
        if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelError(f"{p}: member {name!r} uses compression method {i.compress_type}; "
                             "torch.export archives are stored or deflated")
        if i.file_size > 64 * 2**20 and i.compress_size and \
                i.file_size / i.compress_size > MAX_RATIO:
            raise ModelError(f"{p}: member {name!r} expands {i.file_size // i.compress_size}x "
                             "(a zip bomb?)")
    if len(tops) != 1:
        raise ModelError(f"{p}: not a torch.export archive (members under {len(tops)} "
                         "top-level folders)")
    return tops.pop()


def _check_crcs(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """Read every member through (zipfile checks sizes and CRC-32 at the end of each)."""
    for i in infos:
        with zf.open(i) as f:
            while f.read(1 << 20):
                pass


def check_archive(path: str | Path) -> int:
    """Refuse (:class:`ModelError`) a ``.pt2`` that carries code, claims more memory than it
    stores, or is damaged; return the bytes its tensors will take once loaded."""
    p = Path(path)
    try:
        return _check_archive(p)
    except _Refused as e:
        raise ModelError(f"{p}: refused before loading: {e}") from e
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError,
            EOFError, zlib.error, ValueError, OSError) as e:
        raise ModelError(f"{p}: a damaged torch.export archive: {type(e).__name__}: "
                         f"{str(e)[:160]}") from e


def _check_archive(p: Path) -> int:
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelError(f"{p}: not a torch.export archive (a zip file): {e}") from e
    with zf:
        infos = zf.infolist()
        top = _check_members(p, infos)
        _check_crcs(zf, infos)
        programs = [i for i in infos if re.fullmatch(r"[^/]+/models/[^/]+\.json", i.filename)]
        if not programs:
            raise ModelError(f"{p}: no exported program (models/*.json) in the archive")
        for i in programs:
            check_program(_read_json(zf, i), i.filename)
        return _check_payloads(zf, {i.filename: i for i in infos}, top)
