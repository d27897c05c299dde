"""inductor: ``torch.compile`` with its default backend (TorchInductor), ``dynamic=False``.

The compile happens on the first call, inside :meth:`Inductor.prepare` (reported as setup
time, never inside a timing). Every kernel is compiled through its own small function, so
each has its own dynamo cache with one entry: no recompilation limit to hit (after which
dynamo silently runs eager), and no guard list growing with the number of kernels.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import torch

from convcost.timing.backends.base import Backend, Prepared, SetupError, thread_count
from convcost.timing.device import Numerics

_SERIAL = itertools.count()


def _fresh_caller() -> Any:
    """``run(m, *xs) -> m(*xs)`` with a code object of its own (dynamo caches per code object)."""
    ns: dict[str, Any] = {}
    code = compile("def run(m, *xs):\n    return m(*xs)\n",
                   f"<convcost-inductor-{next(_SERIAL)}>", "exec")
    exec(code, ns)  # a new code object per kernel, not user input
    return ns["run"]


def _cpp_compiler() -> str | None:
    for c in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if c and shutil.which(c):
            return c
    return None


class Inductor(Backend):
    name = "inductor"
    cuda_graph = True
    trains = True

    def unavailable(self, device: str | None) -> str | None:
        if device is not None and device.startswith("cuda"):
            import importlib.util

            if importlib.util.find_spec("triton") is None:
                return "needs triton for CUDA kernels (pip install triton)"
        elif _cpp_compiler() is None:
            return "needs a C++ compiler on PATH for CPU kernels (g++ or clang++; or set CXX)"
        return None

    def info(self, n: Numerics) -> dict[str, Any]:
        cfg = torch._inductor.config
        return {"name": self.name, "version": torch.__version__,
                "provider": "triton" if n.is_cuda else f"C++/OpenMP ({_cpp_compiler()})",
                "threads": None if n.is_cuda else thread_count(n),
                "graph_opt": f"mode=default, dynamic=False, freezing={bool(cfg.freezing)}, "
                             f"max_autotune={bool(cfg.max_autotune)}"}

    def prepare(self, module: torch.nn.Module, inputs: Sequence[torch.Tensor],
                n: Numerics) -> Prepared:
        xs = list(inputs)
        compiled = torch.compile(_fresh_caller(), dynamic=False, fullgraph=False)
        t0 = time.perf_counter()
        try:
            compiled(module, *xs)  # compiles (and autotunes); outside any timing
        except Exception as e:
            raise SetupError("compile", e) from e
        if n.is_cuda:
            torch.cuda.synchronize()
        return Prepared(lambda: compiled(module, *xs), time.perf_counter() - t0)


INDUCTOR = Inductor()
