"""Example inputs: what a model is called with, and seeded values for it.

An :class:`Example` is the structure of one forward call: positional arguments and keyword
arguments, each a tensor (shape, dtype, value range), a list or tuple of them, a dict, or a
plain scalar. It comes from ``--input-shape`` (one float tensor), ``--input`` (the grammar in
:func:`parse_input`, repeatable) or an inputs file (:func:`read_inputs_file`); every size is
checked before anything is allocated. :meth:`Example.make` makes the values: one generator
seeded with 0, tensors in order, so that counting, timing and a spec's examples see the same
values wherever a model is run (for plain float inputs, exactly what earlier versions made).

See docs/inputs.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from convcost.errors import InputError
from convcost.sources.lines import FileValidator

MAX_RANK = 8  # dimensions of one tensor
MAX_DIM = 1 << 20  # one dimension
MAX_TENSORS = 4096  # tensors in one example
MAX_ITEMS = 4096  # items of one list, tuple or dict
MAX_DEPTH = 8  # nesting of lists, tuples and dicts
MAX_TEXT = 4000  # characters of one --input value
DEFAULT_INT_HIGH = 2  # integer tensors without a bound hold 0 and 1: valid indices anywhere

# dtype names accepted -> canonical name
DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float64": "float64", "fp64": "float64", "double": "float64",
    "int64": "int64", "long": "int64", "int32": "int32", "int": "int32",
    "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool",
}
FILLS = ("randn", "rand", "zeros", "ones")  # floating tensors: normal, uniform [0, 1), 0, 1
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, DTYPE_NAMES[name])


def element_bytes(name: str) -> int:
    return torch.empty((), dtype=torch_dtype(name)).element_size()


# --------------------------------------------------------------------------- structure


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: its shape, dtype (canonical name), and values: floating tensors by ``fill``
    (seeded), integer ones uniform in [low, high), bool ones True/False at random."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: int = 0
    high: int | None = None
    fill: str = "randn"

    @property
    def floating(self) -> bool:
        return self.dtype in ("float32", "float16", "bfloat16", "float64")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def text(self) -> str:
        s = "x".join(map(str, self.shape)) if self.shape else "scalar"
        if self.dtype != "float32":
            s += f":{self.dtype}"
        if not self.floating and self.dtype != "bool" and (self.low, self.high) != (0, None):
            s += f"<{self.high}" if self.low == 0 else f"[{self.low},{self.high})"
        if self.fill != "randn":
            s += f"~{self.fill}"
        return s

    def key(self) -> Any:
        return {"t": list(self.shape), "dtype": self.dtype, "low": self.low, "high": self.high,
                "fill": self.fill}

    def make(self, g: torch.Generator, float_dtype: torch.dtype | None) -> torch.Tensor:
        """Seeded values (on the CPU) from ``g``; floating tensors in ``float_dtype`` if given."""
        if self.floating:
            if self.fill == "randn":
                x = torch.randn(self.shape, generator=g)
            elif self.fill == "rand":
                x = torch.rand(self.shape, generator=g)
            else:
                x = (torch.zeros if self.fill == "zeros" else torch.ones)(self.shape)
            return x.to(float_dtype or torch_dtype(self.dtype))
        if self.dtype == "bool":
            return torch.randint(0, 2, self.shape, generator=g).bool()
        high = self.high if self.high is not None else self.low + DEFAULT_INT_HIGH
        return torch.randint(self.low, high, self.shape, generator=g, dtype=torch_dtype(self.dtype))


@dataclass(frozen=True)
class Seq:
    """A list or tuple of inputs (``kind``: list | tuple)."""

    kind: str
    items: tuple[Node, ...]

    def text(self) -> str:
        inner = ", ".join(node_text(i) for i in self.items)
        return f"[{inner}]" if self.kind == "list" else f"({inner}{',' if len(self.items) == 1 else ''})"


@dataclass(frozen=True)
class Map:
    """A dict of inputs (string keys, in order)."""

    items: tuple[tuple[str, Node], ...]

    def text(self) -> str:
        return "{" + ", ".join(f"{k}: {node_text(v)}" for k, v in self.items) + "}"


@dataclass(frozen=True)
class Scalar:
    """A plain Python value passed as it is (a number, true/false, null or text)."""

    value: bool | int | float | str | None

    def text(self) -> str:
        return repr(self.value)


Node = TensorSpec | Seq | Map | Scalar


def node_text(n: Node) -> str:
    return n.text()


def _walk(n: Node) -> Iterator[TensorSpec]:
    if isinstance(n, TensorSpec):
        yield n
    elif isinstance(n, Seq):
        for i in n.items:
            yield from _walk(i)
    elif isinstance(n, Map):
        for _, v in n.items:
            yield from _walk(v)


def _key(n: Node) -> Any:
    if isinstance(n, TensorSpec):
        return n.key()
    if isinstance(n, Seq):
        return {n.kind: [_key(i) for i in n.items]}
    if isinstance(n, Map):
        return {"dict": [[k, _key(v)] for k, v in n.items]}
    return {"value": n.value}


def _make(n: Node, g: torch.Generator, float_dtype: torch.dtype | None) -> Any:
    if isinstance(n, TensorSpec):
        return n.make(g, float_dtype)
    if isinstance(n, Seq):
        items = [_make(i, g, float_dtype) for i in n.items]
        return items if n.kind == "list" else tuple(items)
    if isinstance(n, Map):
        return {k: _make(v, g, float_dtype) for k, v in n.items}
    return n.value


def _on_meta(n: Node, float_dtype: torch.dtype) -> Any:
    if isinstance(n, TensorSpec):
        return torch.empty(n.shape, device="meta",
                           dtype=float_dtype if n.floating else torch_dtype(n.dtype))
    if isinstance(n, Seq):
        items = [_on_meta(i, float_dtype) for i in n.items]
        return items if n.kind == "list" else tuple(items)
    if isinstance(n, Map):
        return {k: _on_meta(v, float_dtype) for k, v in n.items}
    return n.value


@dataclass(frozen=True)
class Call:
    """Real values of one call: ``model(*args, **kwargs)``."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def run(self, fn: Callable[..., Any]) -> Any:
        return fn(*self.args, **self.kwargs)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the call, in order (positional first, then keywords)."""
        from torch.utils._pytree import tree_leaves

        return [x for x in tree_leaves((self.args, self.kwargs)) if isinstance(x, torch.Tensor)]

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Call:
        from torch.utils._pytree import tree_map

        args, kwargs = tree_map(lambda x: fn(x) if isinstance(x, torch.Tensor) else x,
                                (self.args, self.kwargs))
        return Call(tuple(args), dict(kwargs))


def as_call(inputs: Any) -> Call:
    """A :class:`Call` from a Call, or from a tuple/list of positional inputs."""
    return inputs if isinstance(inputs, Call) else Call(tuple(inputs))


@dataclass(frozen=True)
class Example:
    """The inputs of one forward call: positional ``args`` and keyword ``kwargs`` (name, node)
    pairs."""

    args: tuple[Node, ...]
    kwargs: tuple[tuple[str, Node], ...] = ()

    @classmethod
    def plain(cls, shapes: Sequence[Sequence[int]]) -> Example:
        """Positional float32 tensors of ``shapes`` (standard normal values)."""
        return cls(tuple(TensorSpec(tuple(int(d) for d in s)) for s in shapes))

    @property
    def is_plain(self) -> bool:
        """Only positional float32 tensors with normal values (the one-tensor form)."""
        return not self.kwargs and all(isinstance(a, TensorSpec) and a.dtype == "float32"
                                       and a.fill == "randn" for a in self.args)

    def tensors(self) -> list[TensorSpec]:
        """Every tensor, in the order values are made (positional first, then keywords)."""
        out: list[TensorSpec] = []
        for n in (*self.args, *(v for _, v in self.kwargs)):
            out.extend(_walk(n))
        return out

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [t.shape for t in self.tensors()]

    @property
    def batch(self) -> int | None:
        """The batch: the first input's first dimension, or the length of a list of images."""
        first = self.args[0] if self.args else (self.kwargs[0][1] if self.kwargs else None)
        if isinstance(first, TensorSpec):
            return first.shape[0] if first.shape else None
        if isinstance(first, Seq):
            return len(first.items)
        return None

    def nbytes(self) -> int:
        return sum(t.numel * element_bytes(t.dtype) for t in self.tensors())

    def text(self) -> str:
        """``1x3x224x224``; ``[3x480x640, 3x320x320]``; ``1x128:int64<30522, mask=1x128:bool``."""
        parts = [node_text(a) for a in self.args] + [f"{k}={node_text(v)}" for k, v in self.kwargs]
        return ", ".join(parts)

    def key(self) -> Any:
        """What identifies these inputs in a measurement's key (structure, shapes, dtypes)."""
        return {"args": [_key(a) for a in self.args], "kwargs": [[k, _key(v)] for k, v in self.kwargs]}

    def make(self, float_dtype: torch.dtype | None = None) -> Call:
        """Seeded values (CPU): one generator seeded with 0, tensors in order."""
        g = torch.Generator().manual_seed(0)
        args = tuple(_make(a, g, float_dtype) for a in self.args)
        return Call(args, {k: _make(v, g, float_dtype) for k, v in self.kwargs})

    def on_meta(self, float_dtype: torch.dtype = torch.float32) -> Call:
        """The same structure with meta tensors (nothing allocated)."""
        return Call(tuple(_on_meta(a, float_dtype) for a in self.args),
                    {k: _on_meta(v, float_dtype) for k, v in self.kwargs})

    def with_batch(self, batch: int) -> Example:
        """The batch changed: the first dimension of every top-level tensor, or the number of
        items of a top-level list (its items repeated in turn)."""
        def one(n: Node) -> Node:
            if isinstance(n, TensorSpec) and n.shape:
                return replace(n, shape=(batch, *n.shape[1:]))
            if isinstance(n, Seq) and n.kind == "list" and n.items:
                return Seq("list", tuple(n.items[i % len(n.items)] for i in range(batch)))
            return n
        return replace(self, args=tuple(one(a) for a in self.args),
                       kwargs=tuple((k, one(v)) for k, v in self.kwargs))


_DTYPE_OF = {getattr(torch, n): n for n in set(DTYPE_NAMES.values())}


def _node_of(x: Any, depth: int = 0) -> Node:
    """The structure of a real value: tensors, lists, tuples, dicts, scalars."""
    if isinstance(x, torch.Tensor):
        return TensorSpec(tuple(int(d) for d in x.shape), _DTYPE_OF.get(x.dtype, "float32"))
    if isinstance(x, (list, tuple)) and depth < MAX_DEPTH:
        return Seq("list" if isinstance(x, list) else "tuple",
                   tuple(_node_of(i, depth + 1) for i in x))
    if isinstance(x, dict) and depth < MAX_DEPTH:
        return Map(tuple((str(k), _node_of(v, depth + 1)) for k, v in x.items()))
    if x is None or isinstance(x, (bool, int, float, str)):
        return Scalar(x)
    return Scalar(type(x).__name__)


def _is_shape(x: Any) -> bool:
    return isinstance(x, (list, tuple, torch.Size)) and all(
        isinstance(d, int) and not isinstance(d, bool) for d in x)


def as_example(inputs: Any) -> Example:
    """An :class:`Example` from an Example, a :class:`Call` or positional values (their
    structure), or a list of shapes (plain float tensors)."""
    if isinstance(inputs, Example):
        return inputs
    if isinstance(inputs, Call):
        return Example(tuple(_node_of(a) for a in inputs.args),
                       tuple((k, _node_of(v)) for k, v in inputs.kwargs.items()))
    items = list(inputs)
    if all(_is_shape(x) for x in items):
        return Example.plain(items)
    return Example(tuple(_node_of(a) for a in items))


def seeded_inputs(shapes: Sequence[Sequence[int]],
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """One standard-normal tensor per shape, from one generator seeded with 0 (CPU)."""
    return Example.plain(shapes).make(dtype).args


# --------------------------------------------------------------------------- tracing


def _tensor_tree(x: Any, depth: int = 0) -> bool:
    """A tensor, or lists/tuples of them: what the JIT tracer takes as an input."""
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (list, tuple)) and x and depth < MAX_DEPTH:
        return all(_tensor_tree(i, depth + 1) for i in x)
    return False


@contextmanager
def traceable(model: torch.nn.Module, call: Call) -> Iterator[tuple[Any, ...]]:
    """Positional inputs the JIT tracer can take, for ``model`` called as ``call``: keyword
    arguments and positional ones that are not tensors (or lists of them) are bound to the
    model's ``forward`` while the context lasts (the tracer sees them as constants)."""
    keep = [i for i, a in enumerate(call.args) if _tensor_tree(a)]
    if not call.kwargs and len(keep) == len(call.args):
        yield call.args
        return
    bound = "forward" in vars(model)
    original = model.forward

    def forward(*traced: Any) -> Any:
        args = list(call.args)
        for i, v in zip(keep, traced, strict=True):
            args[i] = v
        return original(*args, **call.kwargs)

    model.forward = forward  # type: ignore[method-assign]
    try:
        yield tuple(call.args[i] for i in keep)
    finally:
        if bound:
            model.forward = original  # type: ignore[method-assign]
        else:
            del model.forward


class FlatCall(torch.nn.Module):
    """``module`` called as ``call`` with its tensors given positionally: ``forward(*tensors)``
    rebuilds the call's structure and returns the output's tensors as a flat tuple, so that
    every backend (export, compile, runtimes) sees tensors in and tensors out."""

    def __init__(self, module: torch.nn.Module, call: Call) -> None:
        super().__init__()
        from torch.utils._pytree import tree_flatten

        self.module = module
        self.training = module.training  # an exporter restores this mode on the whole tree
        leaves, self._spec = tree_flatten((call.args, call.kwargs))
        self._slots = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
        self._leaves = [None if isinstance(x, torch.Tensor) else x for x in leaves]
        self.paths: list[str] = []  # where each returned tensor sits in the model's output

    def name_outputs(self, text: str) -> str:
        """``output [3]`` (the flat tuple's index) -> ``output [0]['labels']`` in ``text``."""
        return re.sub(r"output \[(\d+)\]", lambda m: "output " + (
            self.paths[int(m[1])] if int(m[1]) < len(self.paths) else m[0][7:]), text)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from torch.utils._pytree import tree_unflatten

        leaves = list(self._leaves)
        for i, t in zip(self._slots, tensors, strict=True):
            leaves[i] = t
        args, kwargs = tree_unflatten(leaves, self._spec)
        out = self.module(*args, **kwargs)
        leaves = [(p, x) for p, x in output_leaves(out) if isinstance(x, torch.Tensor)]
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self.paths = [p for p, _ in leaves]
        return tuple(x for _, x in leaves)


def output_leaves(out: Any) -> list[tuple[str, Any]]:
    """(path, leaf) of every leaf of a model's output, whatever its structure (tensor, tuple,
    list, dict, namedtuple, a list of dicts): ``[0]['boxes']``-style paths."""
    from torch.utils._pytree import keystr, tree_flatten_with_path

    leaves, _ = tree_flatten_with_path(out)
    return [(keystr(p) or "output", x) for p, x in leaves]


# --------------------------------------------------------------------------- parsing


_TENSOR = re.compile(r"(?P<dims>\d+(?:[x,]\d+)*|scalar)"
                     r"(?::(?P<dtype>[a-z0-9]+))?"
                     r"(?:<(?P<high>-?\d+)|\[(?P<lo>-?\d+),(?P<hi>-?\d+)\))?"
                     r"(?:~(?P<fill>[a-z]+))?")
_LIST = re.compile(r"\[(?P<items>.*)\](?:\*(?P<times>\d+))?")


def _check_dims(dims: Sequence[Any], where: str) -> tuple[int, ...]:
    if len(dims) > MAX_RANK:
        raise InputError(f"{where}: {len(dims)} dimensions; at most {MAX_RANK}")
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_DIM:
            raise InputError(f"{where}: dimension {str(d)[:40]!r} must be an integer from 1 to "
                             f"{MAX_DIM}")
        out.append(d)
    return tuple(out)


def _tensor(dims: tuple[int, ...], dtype: str | None, low: int | None, high: int | None,
            fill: str | None, where: str) -> TensorSpec:
    name = DTYPE_NAMES.get(dtype or "float32")
    if name is None:
        raise InputError(f"{where}: dtype {str(dtype)[:40]!r}; use one of "
                         f"{', '.join(sorted(set(DTYPE_NAMES.values())))}")
    spec = TensorSpec(dims, name)
    if low is not None or high is not None:
        if spec.floating or name == "bool":
            raise InputError(f"{where}: a value range applies to integer tensors only "
                             f"(this one is {name})")
        lo = low or 0
        info = torch.iinfo(torch_dtype(name))
        if high is None or not info.min <= lo < high <= info.max:
            raise InputError(f"{where}: the range [{lo}, {high}) must hold at least one value "
                             f"and fit {name} ({info.min} to {info.max})")
        spec = replace(spec, low=lo, high=high)
    if fill is not None:
        if fill not in FILLS or not spec.floating:
            raise InputError(f"{where}: fill {str(fill)[:20]!r}; floating tensors take "
                             f"{', '.join(FILLS)}")
        spec = replace(spec, fill=fill)
    return spec


def _parse_tensor(text: str, where: str) -> TensorSpec:
    m = _TENSOR.fullmatch(text)
    if not m:
        raise InputError(f"{where}: {text[:80]!r} is not a tensor; use DIMS[:DTYPE][<HIGH], "
                         "e.g. 1x3x224x224, 1x128:int64<30522 or 3x480x640")
    dims = () if m["dims"] == "scalar" else _check_dims(
        [int(d) for d in re.split(r"[x,]", m["dims"])], f"{where} {text[:40]!r}")
    high = m["high"] if m["high"] is not None else m["hi"]
    return _tensor(dims, m["dtype"], int(m["lo"]) if m["lo"] is not None else None,
                   int(high) if high is not None else None, m["fill"], f"{where} {text[:40]!r}")


def parse_value(text: str, where: str = "--input") -> Node:
    """A tensor (``1x3x224x224``, ``1x128:int64<30522``) or a list of them
    (``[3x480x640, 3x320x320]``, ``[3x224x224]*4``). Inside a list, dimensions are joined
    by ``x``; a lone tensor may use commas (``1,3,224,224``)."""
    s = "".join(text.split()).lower()
    if not s:
        raise InputError(f"{where}: empty; use e.g. 1x3x224x224 or [3x480x640, 3x320x320]")
    m = _LIST.fullmatch(s)
    if m is None:
        return _parse_tensor(s, where)
    body = m["items"]
    if not body:
        raise InputError(f"{where}: an empty list; give at least one tensor, e.g. [3x224x224]")
    items = [_parse_tensor(p, where) for p in body.split(",")]
    times = int(m["times"]) if m["times"] else 1
    if not 1 <= times * len(items) <= MAX_ITEMS:
        raise InputError(f"{where}: a list of {times * len(items)} tensors; at most {MAX_ITEMS}")
    return Seq("list", tuple(items) * times)


def parse_input(values: Sequence[str]) -> Example:
    """``--input`` values: each one positional input (``VALUE``), a keyword one
    (``NAME=VALUE``), or an inputs file (``FILE.yaml``, alone)."""
    files = [v for v in values if v.strip().lower().endswith((".yaml", ".yml"))]
    if files:
        if len(values) > 1:
            raise InputError(f"--input {files[0]}: an inputs file says everything; give it alone")
        return read_inputs_file(files[0])
    args: list[Node] = []
    kwargs: list[tuple[str, Node]] = []
    for raw in values:
        if len(raw) > MAX_TEXT:
            raise InputError(f"--input: a value of {len(raw)} characters; at most {MAX_TEXT}")
        name, eq, rest = raw.partition("=")
        if eq:
            name = name.strip()
            if not _NAME.fullmatch(name):
                raise InputError(f"--input {raw[:60]!r}: {name[:40]!r} is not a keyword "
                                 "argument name (a Python identifier)")
            if any(k == name for k, _ in kwargs):
                raise InputError(f"--input: keyword {name!r} is given twice")
            kwargs.append((name, parse_value(rest, f"--input {name}")))
        elif kwargs:
            raise InputError(f"--input {raw[:60]!r}: positional inputs come before keyword ones")
        else:
            args.append(parse_value(raw, f"--input #{len(args) + 1}"))
    return check_example(Example(tuple(args), tuple(kwargs)), "--input")


def check_example(ex: Example, where: str) -> Example:
    """Refuse more tensors than :data:`MAX_TENSORS` (sizes were checked as they were read)."""
    n = len(ex.tensors())
    if n > MAX_TENSORS:
        raise InputError(f"{where}: {n} tensors; at most {MAX_TENSORS}")
    if not ex.args and not ex.kwargs:
        raise InputError(f"{where}: no inputs; give at least one")
    return ex


# --------------------------------------------------------------------------- inputs file


def read_inputs_file(path: str) -> Example:
    """An inputs file (YAML): ``args`` (a list) and ``kwargs`` (a mapping) of nodes. A node is
    a tensor (the ``--input`` text, or a mapping ``{shape, dtype, low, high, fill}``), a YAML
    list, ``{tuple: [...]}``, ``{dict: {...}}``, or a number, true/false or null. One line
    naming the file, line and key on any problem (exit 2)."""
    from convcost.sources.yamlio import load_yaml_file

    v = _InputsFile(path)
    data = load_yaml_file(path, "inputs file")
    if not isinstance(data, dict):
        raise v.err("must be a mapping with 'args' (a list) and/or 'kwargs' (a mapping)")
    k = v.unknown_key(data, ("args", "kwargs"))
    if k is not None:
        raise v.err(f"unknown key {str(k)[:40]!r}; allowed: args, kwargs", data, k)
    raw_args, raw_kwargs = data.get("args", []), data.get("kwargs", {})
    if not isinstance(raw_args, list) or len(raw_args) > MAX_ITEMS:
        raise v.err(f"'args' must be a list of at most {MAX_ITEMS} inputs", data, "args")
    if not isinstance(raw_kwargs, dict) or len(raw_kwargs) > MAX_ITEMS:
        raise v.err(f"'kwargs' must be a mapping of at most {MAX_ITEMS} inputs", data, "kwargs")
    args = tuple(v.node(a, data, "args", f"args[{i}]", 1) for i, a in enumerate(raw_args))
    kwargs = []
    for name, node in raw_kwargs.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise v.err(f"kwargs: {str(name)[:40]!r} is not a keyword argument name",
                        raw_kwargs, name)
        kwargs.append((name, v.node(node, raw_kwargs, name, f"kwargs.{name}", 1)))
    return check_example(Example(args, tuple(kwargs)), str(path))


class _InputsFile(FileValidator):
    """The line-numbered validator of an inputs file."""

    def err(self, msg: str, node: Any = None, key: Any = None) -> InputError:
        line = self.line(node, key)
        return InputError(f"{self.file}{f':{line}' if line else ''}: {msg}")

    def node(self, raw: Any, parent: Any, key: Any, where: str, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise self.err(f"{where}: nested deeper than {MAX_DEPTH} levels", parent, key)
        try:
            return self._node(raw, parent, key, where, depth)
        except InputError as e:
            if str(e).startswith(str(self.file)):
                raise
            raise self.err(str(e), parent, key) from None

    def _node(self, raw: Any, parent: Any, key: Any, where: str, depth: int) -> Node:
        if isinstance(raw, str):
            return parse_value(raw, where)
        if raw is None or isinstance(raw, (bool, int, float)):
            if isinstance(raw, float) and not math.isfinite(raw):
                raise self.err(f"{where}: {raw} is not a finite number", parent, key)
            return Scalar(raw)
        if isinstance(raw, list):
            return self._seq("list", raw, parent, key, where, depth)
        if not isinstance(raw, dict):
            raise self.err(f"{where}: a {type(raw).__name__} is not an input", parent, key)
        if "shape" in raw:
            return self._tensor(raw, where)
        if len(raw) == 1 and next(iter(raw)) in ("tuple", "dict", "str"):
            kind, body = next(iter(raw.items()))
            if kind == "tuple" and isinstance(body, list):
                return self._seq("tuple", body, raw, kind, where, depth)
            if kind == "str" and isinstance(body, str) and len(body) <= MAX_TEXT:
                return Scalar(body)
            if kind == "dict" and isinstance(body, dict) and len(body) <= MAX_ITEMS:
                items = []
                for name, n in body.items():
                    if not isinstance(name, str) or len(name) > 200:
                        raise self.err(f"{where}.dict: keys must be text", body, name)
                    items.append((name, self.node(n, body, name, f"{where}.{name}",
                                                  depth + 1)))
                return Map(tuple(items))
        raise self.err(f"{where}: a mapping is a tensor {{shape, dtype, low, high, fill}}, "
                       "{tuple: [...]}, {dict: {...}} or {str: text}", parent, key)

    def _seq(self, kind: str, raw: list, parent: Any, key: Any, where: str,
             depth: int) -> Seq:
        if len(raw) > MAX_ITEMS:
            raise self.err(f"{where}: {len(raw)} items; at most {MAX_ITEMS}", parent, key)
        return Seq(kind, tuple(self.node(x, raw, None, f"{where}[{i}]", depth + 1)
                               for i, x in enumerate(raw)))

    def _tensor(self, raw: dict, where: str) -> TensorSpec:
        k = self.unknown_key(raw, ("shape", "dtype", "low", "high", "fill"))
        if k is not None:
            raise self.err(f"{where}: unknown key {str(k)[:40]!r}; a tensor has shape, "
                           "dtype, low, high, fill", raw, k)
        shape = raw["shape"]
        if not isinstance(shape, list):
            raise self.err(f"{where}.shape must be a list of integers, e.g. [1, 3, 224, 224]",
                           raw, "shape")
        for name in ("low", "high"):
            val = raw.get(name)
            if val is not None and (isinstance(val, bool) or not isinstance(val, int)):
                raise self.err(f"{where}.{name} must be an integer", raw, name)
        dtype = raw.get("dtype")
        if dtype is not None and not isinstance(dtype, str):
            raise self.err(f"{where}.dtype must be a name such as int64", raw, "dtype")
        fill = raw.get("fill")
        try:
            return _tensor(_check_dims(shape, f"{where}.shape"), dtype, raw.get("low"),
                           raw.get("high"), fill if isinstance(fill, str) or fill is None
                           else str(fill), where)
        except InputError as e:
            raise self.err(str(e), raw, None) from None


