"""openvino: the module exported with ``torch.onnx.export``, read by OpenVINO and compiled for
its CPU plugin (latency hint, one stream). Inputs and outputs share torch tensors' memory.
fp32 runs with the f32 precision hint (OpenVINO would otherwise pick bf16 on CPUs that have
it); fp16/bf16 keep the model in fp32 and set the f16/bf16 hint, as OpenVINO deploys them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from convcost.timing.backends.base import Backend, Prepared, SetupError, thread_count
from convcost.timing.backends.onnx_export import export_for_runtime
from convcost.timing.device import Numerics

HINTS = {"fp32": "f32", "tf32": "f32", "fp16": "f16", "bf16": "bf16"}


class OpenVino(Backend):
    name = "openvino"
    extra = "openvino"
    needs = ("openvino",)
    devices = ("cpu",)

    def info(self, n: Numerics) -> dict[str, Any]:
        import openvino as ov

        return {"name": self.name, "version": ov.__version__.split("-")[0], "provider": "CPU plugin",
                "threads": thread_count(n), "graph_opt": "PERFORMANCE_HINT=LATENCY, NUM_STREAMS=1",
                "precision": HINTS[n.dtype]}

    def prepare(self, module: torch.nn.Module, inputs: Sequence[torch.Tensor],
                n: Numerics) -> Prepared:
        t0 = time.perf_counter()
        if n.dtype in ("fp16", "bf16"):  # the model stays fp32; the hint sets the precision
            import copy

            module = copy.deepcopy(module).float()
            inputs = [x.float() for x in inputs]
        xs, blob, exporter = export_for_runtime(module, inputs)
        try:
            return self._compile(blob, exporter, xs, n, t0)
        except Exception as e:
            raise SetupError("compile", e) from e

    def _compile(self, blob: bytes, exporter: str, xs: list[torch.Tensor], n: Numerics,
                 t0: float) -> Prepared:
        import numpy as np
        import openvino as ov

        core = ov.Core()
        model = core.read_model(blob, ov.Tensor(np.empty(0, np.uint8)))
        compiled = core.compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": thread_count(n), "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": HINTS[n.dtype]})
        req = compiled.create_infer_request()
        by_name = {f"in{i}": x for i, x in enumerate(xs)}  # the names given at export
        for i, port in enumerate(compiled.inputs):  # unused inputs may have been dropped
            req.set_input_tensor(i, ov.Tensor(by_name[port.get_any_name()].numpy(),
                                              shared_memory=True))
        req.infer()  # first inference: output shapes known, memory allocated
        ys = []
        for i in range(len(compiled.outputs)):
            first = req.get_output_tensor(i).data
            arr = np.empty(first.shape, dtype=first.dtype)
            req.set_output_tensor(i, ov.Tensor(arr, shared_memory=True))
            ys.append(torch.from_numpy(arr))
        out = ys[0] if len(ys) == 1 else tuple(ys)
        infer = req.infer
        keep = (compiled, req, xs, ys)  # the shared memory lives as long as the callable

        def call(_keep: Any = keep) -> Any:
            infer()
            return out

        call()
        return Prepared(call, time.perf_counter() - t0, {"exporter": exporter})


OPENVINO = OpenVino()
