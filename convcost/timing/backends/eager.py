"""eager: the module's own forward, as PyTorch runs it without compilation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from convcost.timing.backends.base import Backend, Prepared, thread_count
from convcost.timing.device import Numerics


class Eager(Backend):
    name = "eager"
    cuda_graph = True
    trains = True
    reference = True

    def info(self, n: Numerics) -> dict[str, Any]:
        return {"name": self.name, "version": torch.__version__,
                "provider": "cuDNN" if n.is_cuda else "oneDNN / ATen CPU",
                "threads": None if n.is_cuda else thread_count(n), "graph_opt": "none (eager)"}

    def key_id(self, n: Numerics) -> str:
        return self.name  # torch, cuDNN and oneDNN versions are in the device fingerprint

    def prepare(self, module: torch.nn.Module, inputs: Sequence[torch.Tensor],
                n: Numerics) -> Prepared:
        xs = list(inputs)
        return Prepared(lambda: module(*xs))


EAGER = Eager()
