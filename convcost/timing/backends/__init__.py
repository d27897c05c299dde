"""Runtimes that run the timed kernels: a registry of small backends, as fvcore's handles.

Each backend turns a module (already on the timing device, dtype and memory format) and its
inputs into a callable that runs it once (:meth:`Backend.prepare`); the setup (compile, export,
session creation) happens there, outside any timing. The engine checks the callable's output
against eager PyTorch before timing it (:func:`check_against_eager`).

============  ================================  ===============  =============================
name          runs with                          extra            devices
============  ================================  ===============  =============================
eager         the module's own forward           (none)           cpu, cuda
inductor      ``torch.compile`` (inductor)       (none)           cpu (C++ compiler), cuda
onnxruntime   ``torch.onnx.export`` + session    ``convcost[onnx]``  cpu, cuda (CUDA EP)
openvino      ``torch.onnx.export`` + OpenVINO   ``convcost[openvino]``  cpu
executorch    ``torch.export`` + XNNPACK delegate ``convcost[executorch]``  cpu
              + ExecuTorch runtime
============  ================================  ===============  =============================
"""

from __future__ import annotations

from convcost.timing.backends.base import (
    Backend,
    OutputMismatch,
    Prepared,
    SetupError,
    check_against_eager,
    tolerance,
)
from convcost.timing.backends.eager import EAGER
from convcost.timing.backends.executorch_xnnpack import EXECUTORCH
from convcost.timing.backends.inductor import INDUCTOR
from convcost.timing.backends.onnxrt import ONNXRUNTIME
from convcost.timing.backends.openvino_cpu import OPENVINO

BACKENDS: dict[str, Backend] = {b.name: b for b in (EAGER, INDUCTOR, ONNXRUNTIME, OPENVINO,
                                                    EXECUTORCH)}
DEFAULT = "eager"

__all__ = ["BACKENDS", "DEFAULT", "Backend", "OutputMismatch", "Prepared", "SetupError",
           "check_against_eager", "get", "parse_backends", "tolerance"]


def get(name: str) -> Backend:
    return BACKENDS[name]


def parse_backends(text: str, device: str | None = None, *, what: str = "--backend") -> tuple[str, ...]:
    """``"eager,onnxruntime"`` -> ("eager", "onnxruntime"), checked before any work: names
    known, extras installed, device supported. Raises :class:`~convcost.errors.InputError` with
    one line naming the backend and what to install or change."""
    from convcost.errors import InputError

    names: list[str] = []
    for part in text.split(","):
        n = part.strip().lower()
        if not n:
            continue
        if n not in BACKENDS:
            raise InputError(f"{what} {part.strip()!r}: use {', '.join(BACKENDS)} "
                             "(several: a comma-separated list)")
        if n not in names:
            names.append(n)
    if not names:
        raise InputError(f"{what} {text!r}: name at least one of {', '.join(BACKENDS)}")
    for n in names:
        why = BACKENDS[n].unavailable(device)
        if why:
            raise InputError(f"{what} {n}: {why}")
    return tuple(names)
