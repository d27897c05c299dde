"""``torch.onnx.export`` of a module to ONNX bytes, for the onnxruntime and openvino backends.

The TorchScript-based exporter goes first: it exports a conv layer in ~20 ms where the
torch.export-based one (``dynamo=True``, torch's default since 2.9) takes ~1 s and logs
warnings. When it fails (or is gone from a future torch), the torch.export-based exporter
is tried; the exporter used is recorded in the kernel's timing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Sequence

import torch

from convcost.errors import first_line
from convcost.files import quiet_fds

OPSET = 17


def export_for_runtime(module: torch.nn.Module, inputs: Sequence[torch.Tensor]
                       ) -> tuple[list[torch.Tensor], bytes, str]:
    """(contiguous inputs, ONNX model, exporter) for a runtime that binds NCHW memory: a
    channels-last input is copied here, once, outside any timing. An export failure is a
    :class:`~convcost.timing.backends.base.SetupError` at stage ``export``."""
    from convcost.timing.backends.base import SetupError

    xs = [x.contiguous() for x in inputs]
    try:
        blob, exporter = export_onnx(module, xs)
    except Exception as e:
        raise SetupError("export", e) from e
    return xs, blob, exporter


def export_onnx(module: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> tuple[bytes, str]:
    """(the ONNX model, the exporter used: 'torchscript' or 'dynamo'). Raises the last
    exporter's error when both fail."""
    names = [f"in{i}" for i in range(len(inputs))]
    # export traces with autograd off but outside inference mode (tracing needs normal tensors)
    with torch.inference_mode(False), torch.no_grad():
        xs = tuple(torch.zeros(x.shape, dtype=x.dtype, device=x.device) for x in inputs)
        with quiet_fds():
            return _export(module, xs, names)


def _export(module: torch.nn.Module, xs: tuple[torch.Tensor, ...],
            names: list[str]) -> tuple[bytes, str]:
    first: Exception | None = None
    try:
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, xs, buf, dynamo=False, opset_version=OPSET,
                              input_names=names, do_constant_folding=True)
        return buf.getvalue(), "torchscript"
    except Exception as e:  # try the other exporter before giving up
        first = e
    try:
        with warnings.catch_warnings(), _quiet_exporter_logs():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(module, xs, dynamo=True, input_names=names,
                                     verbose=False)
        return prog.model_proto.SerializeToString(), "dynamo"
    except Exception as e:
        raise RuntimeError(f"torch.onnx.export failed: {_line(first)}; with dynamo=True: "
                           f"{_line(e)}") from e


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _line(e: BaseException | None) -> str:
    if e is None:
        return ""
    return _ANSI.sub("", first_line(e, 400))[:200]


@contextlib.contextmanager
def _quiet_exporter_logs():  # type: ignore[no-untyped-def]
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export",
                                               "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)
