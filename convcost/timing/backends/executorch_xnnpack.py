"""executorch: the module exported with ``torch.export``, lowered to the XNNPACK delegate
(``to_edge_transform_and_lower`` with the ``XnnpackPartitioner``), serialised to a program and
run by ExecuTorch's Python runtime: the path a PyTorch model takes to a phone's CPU.

Export, lowering, serialisation and loading are the setup (timed apart, never sampled). The
runtime's thread pool is set to the timing's thread count (``--threads``, else torch's) before
each program is loaded; XNNPACK runs its kernels on that pool. What XNNPACK took is counted on
the lowered graph: the operator nodes inside the delegate's subgraphs, and the nodes left on
ExecuTorch's portable (reference) kernels, which a phone would run too but slowly. Inputs keep
the run's memory format: contiguous NCHW (XNNPACK converts to NHWC inside the delegate), or
with ``--channels-last`` a program that takes and returns NHWC tensors; the runtime copies them
into its planned memory on every call, as an app's call does.
"""

from __future__ import annotations

import contextlib
import copy
import operator
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from convcost.figures import Lowering
from convcost.files import quiet_fds
from convcost.timing.backends.base import Backend, Prepared, SetupError, thread_count, version_of
from convcost.timing.device import Numerics

DELEGATE = "XNNPACK"
_DELEGATE_CALL = "executorch_call_delegate"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ExecuTorch's import, lowering and runtime print to the descriptors (torchao's optional
    libraries, cpuinfo, the thread pool) and warn (experimental APIs, pytree deprecations)."""
    with quiet_fds(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _op_name(target: Any) -> str:
    """``aten.convolution.default`` for an edge operator (its ATen overload); the callable's
    name otherwise."""
    op = getattr(target, "_op", None)
    return str(op) if op is not None else str(getattr(target, "__name__", target))


def _ops(graph: Any) -> list[str]:
    """The operator nodes of an FX graph (getitem, placeholders and outputs are plumbing)."""
    return [_op_name(n.target) for n in graph.nodes
            if n.op == "call_function" and n.target is not operator.getitem]


def lowering_of(edge: Any) -> Lowering:
    """What the XNNPACK partitioner took of a lowered program (an ``EdgeProgramManager``):
    operator nodes inside the delegate's subgraphs vs nodes left on the portable kernels."""
    gm = edge.exported_program().graph_module
    delegated, portable = 0, []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        if _DELEGATE_CALL in str(node.target):
            lowered = getattr(gm, node.args[0].target)
            delegated += len(_ops(lowered.original_module.graph))
        else:
            portable.append(_op_name(node.target))
    return Lowering(DELEGATE, delegated, len(portable), tuple(sorted(set(portable))))


def _lower(module: torch.nn.Module, xs: Sequence[torch.Tensor]) -> tuple[bytes, Lowering]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.inference_mode(False), torch.no_grad():
        args = tuple(torch.zeros_like(x) for x in xs)  # the inputs' memory format kept
        module = _exportable(module)
        try:
            ep = torch.export.export(module, args)
        except Exception as e:
            raise SetupError("export", e) from e
        try:
            edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
            lowering = lowering_of(edge)
            return edge.to_executorch().buffer, lowering
        except Exception as e:
            raise SetupError("lowering", e) from e


def _exportable(module: torch.nn.Module) -> torch.nn.Module:
    """``module``, or a copy export and lowering accept: made outside inference mode (a module
    converted for the timing inside it holds inference tensors, which export cannot trace) and
    with contiguous weights (XNNPACK packs weights itself; its channels-last pass refuses
    channels-last ones). The memory format of a run is the inputs' (NHWC in and out)."""
    tensors = [*module.parameters(), *module.buffers()]
    if not any(t.is_inference() or not t.is_contiguous() for t in tensors):
        return module
    return copy.deepcopy(module).to(memory_format=torch.contiguous_format)


def set_threads(threads: int) -> None:
    """The runtime's thread pool (process-wide) to ``threads`` threads, unless it has them:
    XNNPACK reads the pool on every call, so a program loaded earlier runs on it too."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)


class ExecuTorch(Backend):
    name = "executorch"
    extra = "executorch"
    needs = ("executorch",)
    devices = ("cpu",)

    def info(self, n: Numerics) -> dict[str, Any]:
        return {"name": self.name, "version": _version(), "provider": f"{DELEGATE} delegate",
                "threads": thread_count(n), "graph_opt": "XnnpackPartitioner, default config",
                "runtime": "executorch.runtime (Python bindings)"}

    def key_id(self, n: Numerics) -> str:
        """``executorch 1.5.1 XNNPACK delegate 2 threads``: the runtime, its version, the
        delegate and the threads (the runtime's own pool, apart from torch's)."""
        return self.label(n)

    def prepare(self, module: torch.nn.Module, inputs: Sequence[torch.Tensor],
                n: Numerics) -> Prepared:
        t0 = time.perf_counter()
        xs = list(inputs)
        with _quiet():
            buf, lowering = _lower(module, xs)
            try:
                program, method = _load(buf, thread_count(n))
            except Exception as e:
                raise SetupError("load", e) from e
        execute = method.execute
        keep = (buf, program, method)  # a method reads its program's memory: all live as long

        def call(_keep: Any = keep) -> Any:
            out = execute(xs)
            return out[0] if len(out) == 1 else tuple(out)

        with _quiet():
            call()  # first call: the delegate's memory planned, weights packed; part of setup
        return Prepared(call, time.perf_counter() - t0, lowering=lowering)


def _load(buf: bytes, threads: int) -> tuple[Any, Any]:
    """(program, its forward method): the program must outlive the method."""
    from executorch.runtime import Runtime, Verification

    set_threads(threads)
    program = Runtime.get().load_program(buf, verification=Verification.Minimal)
    return program, program.load_method("forward")


def _version() -> str | None:
    v = version_of("executorch")
    return v.split("+")[0] if v else None


EXECUTORCH = ExecuTorch()
