"""onnxruntime: the module exported with ``torch.onnx.export`` and run by an ``InferenceSession``
on the execution provider of the timing device (CPUExecutionProvider, or CUDAExecutionProvider
on cuda:N, on torch's current stream). Inputs and outputs are bound to torch tensors' memory
(I/O binding), so no copy happens inside a timed call."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from convcost.timing.backends.base import Backend, Prepared, SetupError, thread_count
from convcost.timing.backends.onnx_export import OPSET, export_for_runtime
from convcost.timing.device import Numerics

GRAPH_OPT = "ORT_ENABLE_ALL"


def _element_type(dtype: torch.dtype) -> Any:
    import numpy as np

    types = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
             torch.int64: np.int64, torch.int32: np.int32}
    if dtype not in types:
        raise TypeError(f"onnxruntime I/O binding has no {str(dtype).removeprefix('torch.')} "
                        "element type (use fp32 or fp16)")
    return types[dtype]


class OnnxRuntime(Backend):
    name = "onnxruntime"
    extra = "onnx"
    needs = ("onnxruntime", "onnx")

    def unavailable(self, device: str | None) -> str | None:
        why = super().unavailable(device)
        if why or device is None or not device.startswith("cuda"):
            return why
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return ("this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu "
                    "matching your CUDA), or use --device cpu")
        return None

    def _provider(self, n: Numerics) -> str:
        return "CUDAExecutionProvider" if n.is_cuda else "CPUExecutionProvider"

    def info(self, n: Numerics) -> dict[str, Any]:
        import onnxruntime as ort

        return {"name": self.name, "version": ort.__version__, "provider": self._provider(n),
                "threads": thread_count(n), "graph_opt": GRAPH_OPT,
                "io_binding": True, "opset": OPSET}

    def prepare(self, module: torch.nn.Module, inputs: Sequence[torch.Tensor],
                n: Numerics) -> Prepared:
        t0 = time.perf_counter()
        xs, blob, exporter = export_for_runtime(module, inputs)
        try:
            return self._session(module, inputs, xs, blob, exporter, n, t0)
        except Exception as e:
            raise SetupError("session", e) from e

    def _session(self, module: torch.nn.Module, inputs: Sequence[torch.Tensor],
                 xs: list[torch.Tensor], blob: bytes, exporter: str, n: Numerics,
                 t0: float) -> Prepared:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = thread_count(n)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPT)
        so.log_severity_level = 3
        if n.is_cuda:
            dev = torch.device(n.device)
            opts = {"device_id": dev.index or 0, "use_tf32": int(n.dtype == "tf32"),
                    "user_compute_stream": str(torch.cuda.current_stream(dev).cuda_stream),
                    "cudnn_conv_algo_search": "EXHAUSTIVE"}
            providers: list[Any] = [("CUDAExecutionProvider", opts)]
        else:
            providers = ["CPUExecutionProvider"]
        sess = ort.InferenceSession(blob, so, providers=providers)
        if sess.get_providers()[0] != self._provider(n):
            raise RuntimeError(f"onnxruntime runs on {sess.get_providers()[0]}, not "
                               f"{self._provider(n)}")
        outs = sess.get_outputs()
        # output shapes: from one eager call (ONNX shapes may be symbolic)
        with torch.inference_mode():
            ref = module(*inputs)
        refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
        if len(refs) != len(outs):
            raise RuntimeError(f"the ONNX model has {len(outs)} outputs, eager {len(refs)}")
        ys = [torch.empty(tuple(r.shape), dtype=r.dtype, device=r.device) for r in refs]
        kind, idx = ("cuda", torch.device(n.device).index or 0) if n.is_cuda else ("cpu", 0)
        bind = sess.io_binding()
        by_name = {f"in{i}": x for i, x in enumerate(xs)}  # the names given at export
        for i in sess.get_inputs():  # an input the graph does not use may have been dropped
            x = by_name[i.name]
            bind.bind_input(i.name, kind, idx, _element_type(x.dtype), list(x.shape), x.data_ptr())
        for o, y in zip(outs, ys, strict=True):
            bind.bind_output(o.name, kind, idx, _element_type(y.dtype), list(y.shape),
                             y.data_ptr())
        out = ys[0] if len(ys) == 1 else tuple(ys)
        run = sess.run_with_iobinding
        keep = (sess, xs, ys)  # the bound memory lives as long as the callable

        def call(_keep: Any = keep) -> Any:
            run(bind)
            return out

        call()  # session warm-up (allocations, CUDA algorithm search): part of the setup
        return Prepared(call, time.perf_counter() - t0, {"exporter": exporter})


ONNXRUNTIME = OnnxRuntime()
