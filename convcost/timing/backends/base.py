"""What a backend is, and the check of its output against eager PyTorch."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from convcost.figures import Lowering
from convcost.timing.device import Numerics

# Largest |backend - eager| / max|eager| accepted, per dtype: a different conv algorithm (Winograd,
# another reduction order, fused epilogues) moves fp32 results by ~1e-6 relative; the bounds leave
# room for that, never for a wrong kernel.
TOLERANCE = {"fp32": 1e-3, "tf32": 5e-3, "fp16": 1e-2, "bf16": 5e-2}


def tolerance(dtype: str) -> float:
    return TOLERANCE.get(dtype, 1e-3)


class SetupError(RuntimeError):
    """A backend could not set a kernel up; ``stage`` says where (export, session, compile)."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {error}")
        self.stage, self.error = stage, error


class OutputMismatch(RuntimeError):
    """A backend's output differs from eager PyTorch's beyond the dtype's tolerance."""


@dataclass
class Prepared:
    """A kernel ready to run on a backend: ``fn()`` runs it once on the bound inputs and
    returns its output (a torch tensor). ``setup_s``: seconds spent compiling / exporting /
    creating the session, never part of a timing; ``lowering``: what a delegate took of the
    kernel (a backend that lowers to one)."""

    fn: Callable[[], Any]
    setup_s: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    lowering: Lowering | None = None


class Backend:
    """One runtime. Subclasses set ``name``, ``extra`` and ``needs`` (importable modules) and
    implement :meth:`prepare` and :meth:`info`."""

    name: str = ""
    extra: str | None = None  # the pip extra that installs it: convcost[<extra>]
    needs: tuple[str, ...] = ()
    cuda_graph: bool = False  # whether a CUDA-graph figure of its calls is meaningful
    reference: bool = False  # eager: what the others' outputs are checked against
    trains: bool = False  # can run a backward (the training pass): eager, inductor
    devices: tuple[str, ...] = ("cpu", "cuda")

    def unavailable(self, device: str | None) -> str | None:
        """Why this backend cannot time on ``device`` here (one line), or None."""
        for mod in self.needs:
            if importlib.util.find_spec(mod) is None:
                return (f"needs the {self.extra} extra: pip install 'convcost[{self.extra}]' "
                        f"({mod} is not installed)")
        kind = "cuda" if device and device.startswith("cuda") else "cpu"
        if device is not None and kind not in self.devices:
            return f"times on {' and '.join(self.devices)} only; use --device cpu"
        return None

    def info(self, n: Numerics) -> dict[str, Any]:
        """The fingerprint: name, version, provider/plugin, threads, graph-optimization level."""
        return {"name": self.name}

    def key_id(self, n: Numerics) -> str:
        """What separates this backend's measurements in the latency table (name, version,
        provider and optimization level; threads are in the device fingerprint already)."""
        i = self.info(n)
        return "|".join(str(i.get(k)) for k in ("name", "version", "provider", "graph_opt",
                                                "precision"))

    def label(self, n: Numerics) -> str:
        """The readable id stored beside each figure in the latency table (``backend_id``):
        ``onnxruntime 1.32.0 CPUExecutionProvider 2 threads``."""
        i = self.info(n)
        parts = [i.get("name"), i.get("version"), i.get("provider"),
                 f"{i['threads']} threads" if i.get("threads") else None]
        return " ".join(str(p) for p in parts if p)

    def prepare(self, module: torch.nn.Module, inputs: Sequence[torch.Tensor],
                n: Numerics) -> Prepared:
        raise NotImplementedError


def check_against_eager(out: Any, ref: Any, dtype: str) -> float:
    """Raise :class:`OutputMismatch` unless ``out`` has ``ref``'s structure (tensor, tuple,
    list, dict, namedtuple, nested: every leaf), each tensor its shape and
    max|out - ref| / max|ref| within the dtype's tolerance, other leaves equal; returns the
    largest relative error. A one-item tuple and its tensor are the same output."""
    from convcost.inputs import output_leaves

    if isinstance(ref, torch.Tensor):
        out = _unwrap(out)
    elif isinstance(out, torch.Tensor):
        ref = _unwrap(ref)
    outs, refs = output_leaves(out), output_leaves(ref)
    if len(outs) != len(refs):
        raise OutputMismatch(f"output has {len(outs)} values, eager {len(refs)}")
    worst = 0.0
    for (path, o), (_, r) in zip(outs, refs, strict=True):
        if not isinstance(r, torch.Tensor):
            if o != r:
                raise OutputMismatch(f"output {path} is {str(o)[:40]!r}, eager {str(r)[:40]!r}")
            continue
        if not isinstance(o, torch.Tensor):
            raise OutputMismatch(f"output {path} is a {type(o).__name__}, not a tensor")
        worst = max(worst, _leaf_error(path, o, r, dtype))
    return worst


def _unwrap(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out


def _leaf_error(path: str, o: torch.Tensor, r: torch.Tensor, dtype: str) -> float:
    where = "" if path == "output" else f" {path}"
    if tuple(o.shape) != tuple(r.shape):
        raise OutputMismatch(f"output{where} shape {list(o.shape)} != eager {list(r.shape)}")
    o32, r32 = o.detach().float().to(r.device), r.detach().float()
    scale = float(r32.abs().max()) if r32.numel() else 0.0
    err = float((o32 - r32).abs().max()) if r32.numel() else 0.0
    if err != err:  # nan
        raise OutputMismatch(f"output{where} has non-finite values where eager's has none")
    rel = err / scale if scale > 0 else err
    tol = tolerance(dtype)
    if rel > tol:
        raise OutputMismatch(f"output{where} differs from eager: max relative error {rel:.2g} > "
                             f"{tol:g} ({dtype})")
    return rel


def thread_count(n: Numerics) -> int:
    """The CPU threads a backend is given: the timing's --threads, else torch's."""
    return int(n.threads or torch.get_num_threads())


def version_of(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
