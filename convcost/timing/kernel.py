"""What identifies a measurement: the kernel the device runs, not the row that asked for it.

A measurement is keyed by the module's structure (types and hyper-parameters of every
submodule, as ``extra_repr`` states them: channels, kernel, stride, padding, dilation, groups,
bias, ...), the input shapes, dtype, memory format, backend and the device fingerprint (device
name, capability, driver, torch, CUDA, cuDNN, oneDNN, threads). Weights' values never matter.
For classes outside torch, the signature also carries a hash of the file that defines them, so
editing a model's ``forward`` invalidates its cached timings.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from torch import nn

from convcost.timing.device import Numerics

KEY_FINGERPRINT_FIELDS = ("name", "compute_capability", "driver", "torch", "cuda", "cudnn",
                          "onednn", "threads", "cpu")


@lru_cache(maxsize=256)
def _code_hash(cls: type) -> str:
    """Hash of the source file defining ``cls`` (its class source, or bytecode, as fallbacks)."""
    for get in (lambda: inspect.getsource(sys.modules[cls.__module__]),
                lambda: inspect.getsource(cls)):
        try:
            return hashlib.sha256(get().encode()).hexdigest()[:16]
        except (OSError, TypeError, KeyError):
            continue
    fwd = getattr(cls, "forward", None)
    code = getattr(fwd, "__code__", None)
    return hashlib.sha256(code.co_code if code else cls.__qualname__.encode()).hexdigest()[:16]


def _ident(m: nn.Module) -> str:
    cls = type(m)
    if cls.__module__.startswith("torch.") and not hasattr(m, "graph"):
        return cls.__name__
    code = getattr(m, "code", None)  # fx GraphModule / unflattened export: the generated forward
    if isinstance(code, str):
        return f"{cls.__name__}#{hashlib.sha256(code.encode()).hexdigest()[:16]}"
    return f"{cls.__qualname__}#{_code_hash(cls)}"


def module_signature(m: nn.Module) -> str:
    """Canonical text of a module tree: ``Type(extra_repr)[name=child, ...]``."""
    try:
        extra = m.extra_repr()
    except Exception:  # a user module whose extra_repr fails: its type still identifies it
        extra = "?"
    kids = list(m.named_children())
    s = f"{_ident(m)}({extra})"
    if kids:
        s += "[" + ",".join(f"{n}={module_signature(c)}" for n, c in kids) + "]"
    return s


def describe_module(m: nn.Module, limit: int = 160) -> str:
    """One line for humans and the exported lookup table: ``Conv2d(64, 64, kernel_size=...)``."""
    text = " ".join(repr(m).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def fingerprint_for_key(fp: dict[str, Any]) -> dict[str, Any]:
    return {k: fp.get(k) for k in KEY_FINGERPRINT_FIELDS}


def kernel_key(signature: str, in_shapes: list[tuple[int, ...]], n: Numerics, fp: dict[str, Any],
               *, backend: str = "eager", cold: bool = False, inputs: Any = None,
               pass_name: str = "inference") -> str:
    """Stable hex key of a measurement (the latency table's primary key); ``inputs``: the
    structure of inputs that are not plain tensors (:meth:`convcost.inputs.Example.key`);
    ``pass_name``: training keys differ from inference ones (inference keys are as before)."""
    doc = {"sig": signature, "in": inputs if inputs is not None else [list(s) for s in in_shapes],
           "dtype": n.dtype,
           "memory_format": n.memory_format, "backend": backend, "cold": cold,
           "fp": fingerprint_for_key(fp)}
    if pass_name != "inference":
        doc["pass"] = pass_name
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class Kernel:
    """One thing to time: ``module`` called on fresh inputs of ``in_shapes`` (shapes of plain
    float tensors, or an :class:`~convcost.inputs.Example`: any structure, kept in
    :attr:`example`; ``in_shapes`` then lists its tensors' shapes).

    ``macs`` (when known) weights its share of the time budget; ``label`` names it in the
    lookup table ("Conv2d(64, 64, kernel_size=(3, 3), ...)" or "model ResNet50").
    """

    module: nn.Module
    in_shapes: Any
    expected: tuple[int, ...] | None = None
    macs: int | None = None
    label: str = ""
    scope: str = "layer"  # layer | model
    signature: str = field(default="", repr=False)
    example: Any = field(default=None, repr=False)  # convcost.inputs.Example when not plain

    def __post_init__(self) -> None:
        from convcost.inputs import Example

        if isinstance(self.in_shapes, Example):
            self.example = None if self.in_shapes.is_plain else self.in_shapes
            self.in_shapes = self.in_shapes.shapes
        self.in_shapes = [tuple(s) for s in self.in_shapes]
        if not self.signature:
            self.signature = module_signature(self.module)
        if not self.label:
            self.label = describe_module(self.module)
