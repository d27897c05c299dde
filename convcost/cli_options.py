"""The command line's option types and shared options: each ParamType converts and validates
one option's text (click's ``ParamType.convert``), each decorator adds a group of options, and
:func:`timing_request` turns the timing options into a :class:`~convcost.jobs.TimingRequest`."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from convcost.errors import InputError
from convcost.timing.defaults import DEFAULT_BUDGET_S


class ShapeType(click.ParamType):
    """``1,3,224,224`` -> (1, 3, 224, 224): positive integers."""

    name = "B,C,H,W"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        parts = re.split(r"[,x]", str(value).strip())
        try:
            dims = tuple(int(x) for x in parts)  # an empty part ("1,,3") is an error too
        except ValueError:
            self.fail(f"{value!r} is not a shape; use comma-separated positive integers such as "
                      "1,3,224,224", param, ctx)
        if len(dims) < 2 or any(d < 1 for d in dims):
            self.fail(f"{value!r} is not a shape; use at least two positive integers, e.g. "
                      "1,3,224,224", param, ctx)
        if any(d > 1 << 20 for d in dims):
            self.fail(f"{value!r}: a dimension is larger than {1 << 20}", param, ctx)
        return dims


class FiniteFloat(click.FloatRange):
    """A float range that also refuses nan and inf (``click.FloatRange`` lets nan through)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        import math

        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


class ThreadsType(click.ParamType):
    """``--threads N`` (1-1024), ``auto`` (the cores idle when the run starts) -> int or
    "auto"; a sweep ``1,2,4`` -> a tuple of ints."""

    name = "N[,N...]|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str | tuple[int, ...]:
        if isinstance(value, (int, tuple)) or value == "auto":
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        return sweep_list(self, value, text, 1024, "thread count", "auto, ", "1,2,4", param, ctx)


MAX_SWEEP = 16  # points of a --batch or --threads sweep


def sweep_list(t: click.ParamType, value: Any, text: str, high: int, what: str, also: str,
               example: str, param: Any, ctx: Any) -> int | tuple[int, ...]:
    """``text`` as one integer from 1 to ``high``, or a comma list of them (a sweep: distinct,
    in order, at most :data:`MAX_SWEEP`); ``t.fail`` naming ``what`` otherwise."""
    parts = [p.strip() for p in text.split(",")]
    if any(not p.isdigit() or not 1 <= int(p) <= high for p in parts):
        t.fail(f"{value!r} is not a {what}: use {also}an integer from 1 to {high}, or a comma "
               f"list of them (a sweep: {example})", param, ctx)
    out = tuple(dict.fromkeys(int(p) for p in parts))
    if len(out) > MAX_SWEEP:
        t.fail(f"{value!r}: at most {MAX_SWEEP} {what}s in one sweep", param, ctx)
    return out[0] if len(out) == 1 else out


class BatchesType(click.ParamType):
    """``--batch 8`` -> 8; a sweep ``1,8,32`` -> (1, 8, 32) (distinct, in order)."""

    name = "N[,N...]"

    def __init__(self, high: int) -> None:
        self.high = high

    def convert(self, value: Any, param: Any, ctx: Any) -> int | tuple[int, ...]:
        if isinstance(value, (int, tuple)):
            return value
        return sweep_list(self, value, str(value), self.high, "batch size", "", "1,8,32", param,
                          ctx)


class GroupsType(click.ParamType):
    """``--groups 1,2,4,8`` or ``all`` (every g dividing both C and N of each layer) -> tuple or None."""

    name = "G[,G...]|all"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...] | None:
        if value is None or isinstance(value, tuple):
            return value
        text = str(value).strip().lower()
        if text == "all":
            return None
        parts = [p.strip() for p in text.split(",")]
        if not parts or any(not p for p in parts):
            self.fail(f"{value!r}: use a comma list of positive integers such as 1,2,4,8, or "
                      "'all'", param, ctx)
        out: list[int] = []
        for p in parts:
            if not p.isdigit() or int(p) < 1:
                self.fail(f"{p!r} in {value!r} is not a positive integer; use e.g. 1,2,4,8 or "
                          "'all'", param, ctx)
            if int(p) > 1 << 20:
                self.fail(f"{p!r} is larger than {1 << 20}", param, ctx)
            if int(p) not in out:
                out.append(int(p))
        return tuple(out)


class VariantsType(click.ParamType):
    """``--variants grouped,depthwise,separable`` or ``all``."""

    name = "V[,V...]|all"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, ...]:
        from convcost.variants.catalogue import VARIANTS

        if isinstance(value, tuple):
            return value
        text = str(value).strip().lower()
        if text == "all":
            return VARIANTS
        out: list[str] = []
        for p in (x.strip() for x in text.split(",")):
            if p not in VARIANTS:
                self.fail(f"{p!r} is not a variant; choose from {', '.join(VARIANTS)} or 'all'",
                          param, ctx)
            if p not in out:
                out.append(p)
        return tuple(out)


class IntListType(click.ParamType):
    """``3`` or ``1,3`` -> (1, 3): positive integers."""

    name = "N[,N...]"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(int(x) for x in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r}: use positive integers separated by commas, e.g. 3 or 1,3",
                      param, ctx)
        if any(x < 1 for x in out):
            self.fail(f"{value!r}: sizes must be positive", param, ctx)
        return out


def model_arg_option(f: Callable) -> Callable:
    return click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                        help="Keyword argument for the model's builder (torchvision:, timm:, a "
                             "class or factory), repeatable; values are YAML scalars, e.g. "
                             "--model-arg aux_logits=false --model-arg image_size=384.")(f)


def input_option(f: Callable) -> Callable:
    return click.option("--input", "inputs", multiple=True, metavar="SPEC",
                        help="What a model is called with, repeatable (docs/inputs.md): a "
                             "tensor 1x3x224x224, an integer one 1x128:int64<30522, a list of "
                             "images [3x480x640,3x320x320], a keyword NAME=SPEC, or an inputs "
                             "file FILE.yaml.")(f)


def timeout_option(f: Callable) -> Callable:
    return click.option("--timeout", type=FiniteFloat(1, 86400), default=600.0,
                        show_default=True,
                        help="Seconds allowed for loading and counting a model (its code runs in "
                             "a separate process): a model that hangs ends with one line, "
                             "exit 3.")(f)


def count_on_option(f: Callable) -> Callable:
    return click.option("--count-on", "count_on", type=click.Choice(["auto", "meta", "real"]),
                        default="auto", show_default=True,
                        help="Count on meta tensors (nothing computed: any batch or resolution), "
                             "on real tensors (fvcore's JIT trace), or auto: meta for large "
                             "inputs.")(f)


def memory_option(f: Callable) -> Callable:
    return click.option("--ignore-memory-limit", "ignore_memory", is_flag=True,
                        help="Run even when the memory estimate exceeds what is available.")(f)


def timing_options(f: Callable) -> Callable:
    """Options shared by the commands that time kernels."""
    opts = [
        click.option("--time/--no-time", "do_time", default=True, show_default=True,
                     help="Time the real kernels (--no-time: counts only)."),
        click.option("--device", default="auto", show_default=True,
                     help="auto (CUDA when available), cpu, cuda or cuda:N."),
        click.option("--dtype", type=click.Choice(["fp32", "tf32", "fp16", "bf16"]),
                     help="Kernel dtype; fp32 means TF32 off (default: the spec's, else fp32)."),
        click.option("--channels-last/--contiguous", "channels_last", default=None,
                     help="Memory format (default: channels-last for fp16/bf16 on CUDA)."),
        click.option("--threads", type=ThreadsType(), default="auto", show_default=True,
                     help="CPU threads for timing: auto uses torch's default less the cores "
                          "other tasks are using when the run starts (and says so), or N; a "
                          "comma list (1,2) times every figure at each count (a sweep)."),
        click.option("--cold", is_flag=True,
                     help="Flush the caches (L2 on CUDA) before each timed call."),
        click.option("--max-time", type=FiniteFloat(0.001, 3600), default=1.0,
                     show_default=True, help="Time cap per measurement, in seconds."),
        click.option("--time-budget", type=FiniteFloat(0.1, 86400), default=DEFAULT_BUDGET_S,
                     show_default=True, envvar="CONVCOST_TIME_BUDGET", show_envvar=True,
                     help="Seconds for all the timing of this command, split over the kernels "
                          "still to measure (cached ones cost nothing); what does not fit is "
                          "marked 'not measured (budget)' and the exit code is 4."),
        click.option("--fresh", is_flag=True,
                     help="Re-measure everything instead of reusing the latency table."),
        click.option("--on-busy", "on_busy", type=click.Choice(["withhold", "accept"]),
                     default="withhold", show_default=True, envvar="CONVCOST_ON_BUSY",
                     show_envvar=True,
                     help="Figures measured while the machine was busy (other tasks, steal, a "
                          "canary kernel that moved) are always marked 'busy'; withhold keeps "
                          "them out of headlines and the latency table, accept quotes and "
                          "stores them (a machine you know is shared)."),
        click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write a PNG plot (needs matplotlib: pip install 'convcost[plot]')."),
        click.option("--pass", "pass_name", type=click.Choice(["inference", "training"]),
                     default="inference", show_default=True,
                     help="What a call is: inference (one forward) or training (forward + "
                          "backward: the weights' and the input's gradients per layer, the "
                          "whole model's training step; eager and inductor run it). Also "
                          "counts the backward's MACs."),
        click.option("--backend", "backend", default="eager", show_default=True,
                     metavar="NAME[,NAME...]",
                     help="Runtime(s) to time on, side by side: eager, inductor (torch.compile), "
                          "onnxruntime (convcost[onnx]), openvino (convcost[openvino], CPU), "
                          "executorch (XNNPACK delegate, convcost[executorch], CPU). "
                          "Setup (compile, export) is reported apart from the timings."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def timing_request(o: dict[str, Any]) -> Any:
    """The timing options as a :class:`~convcost.jobs.TimingRequest` (None with --no-time),
    validated now: a bad --device or --backend is an error even with --no-time, and a missing
    extra is named before any work."""
    from convcost.jobs import TimingRequest
    from convcost.timing.backends import DEFAULT, parse_backends
    from convcost.timing.device import resolve_device

    dev = resolve_device(o["device"])
    backends = parse_backends(o["backend"], dev if o["do_time"] else None)
    if not o["do_time"]:
        if backends != (DEFAULT,):
            raise InputError(f"--backend {','.join(backends)} times kernels: drop --no-time (or "
                             "--backend)")
        return None
    return TimingRequest(dev, o["dtype"], o["channels_last"], o["threads"], o["cold"],
                         o["max_time"], o["time_budget"], o["fresh"], backends=backends,
                         on_busy=o["on_busy"], pass_name=o["pass_name"]).resolved()


def source_request(o: dict[str, Any]) -> Any:
    """SOURCE and the options that say how to load and count it (a plan file to apply, read
    and validated now: a bad one is an error before any work)."""
    from convcost.jobs import SourceRequest
    from convcost.sources.load import parse_model_args

    plan = None
    if o.get("apply") is not None:
        from convcost.plan.planfile import read_plan

        plan = (str(o["apply"]), read_plan(o["apply"]))
    inputs = None
    if o.get("inputs"):
        from convcost.inputs import parse_input

        inputs = parse_input(o["inputs"])
    return SourceRequest(o["source"], o["input_shape"], o["batch"],
                         parse_model_args(o["model_args"]), not o["ignore_memory"], o["count_on"],
                         plan, inputs, o.get("pass_name", "inference"))


def candidate_options(f: Callable) -> Callable:
    """What compare and plan select: the variants, their group counts, which convs, the input."""
    opts = [
        click.option("--groups", "groups", type=GroupsType(), default="1,2,4,8",
                     show_default=True,
                     help="Groups for the grouped variants: a comma list, or 'all' (every "
                          "valid g)."),
        click.option("--variants", "variant_names", type=VariantsType(),
                     default="grouped,depthwise,separable", show_default=True,
                     help="Variants: dense, grouped, depthwise, separable, pointwise-grouped, "
                          "shuffle, gdc, or 'all'."),
        click.option("--batch", type=BatchesType(1 << 16),
                     help="Batch size (built-in layer: 32; overrides a spec's); a comma list "
                          "(1,8,32) counts and times every figure at each size (a sweep)."),
        click.option("--input-shape", type=ShapeType(), help="Input shape B,C,H,W for a model."),
        click.option("--layers", "layer_globs", multiple=True, metavar="GLOB",
                     help="Only convs whose qualified name matches GLOB (repeatable, or comma "
                          "list)."),
        click.option("--kernel-size", "kernel_sizes", type=IntListType(), default=None,
                     help="Only convs with this square kernel size, e.g. 3 or 1,3."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def source_options(f: Callable) -> Callable:
    """How a SOURCE is loaded, counted and shown: --model-arg, --count-on, --timeout, --wide,
    --ignore-memory-limit (analyze, compare, plan)."""
    for d in (memory_option, wide_option, timeout_option, count_on_option, model_arg_option,
              input_option):
        f = d(f)
    return f


def apply_option(f: Callable) -> Callable:
    return click.option("--apply", "apply", type=click.Path(dir_okay=False, path_type=Path),
                        help="A plan file (`convcost plan -o plan.yaml`): its variants are "
                             "substituted into SOURCE first.")(f)


def plan_options(f: Callable) -> Callable:
    """The planner's options: limits, objective, pinned layers, the front, verification."""
    opts = [
        click.option("--max-params", metavar="0.6x|12M",
                     help="Params limit: a ratio to the original or a count."),
        click.option("--max-macs", metavar="0.5x|2G",
                     help="MACs limit: a ratio to the original or a count."),
        click.option("--max-latency", metavar="0.8x|15ms",
                     help="Latency limit: a ratio to the original or a duration (the whole "
                          "model, measured)."),
        click.option("--minimize", type=click.Choice(["latency", "params", "macs"]),
                     help="Objective (default latency; params when --max-latency is the only "
                          "limit)."),
        click.option("--keep", "keep", multiple=True, metavar="GLOB",
                     help="Layers to keep as they are (repeatable, or a comma list)."),
        click.option("--frontier", type=click.IntRange(1, 50), default=1, show_default=True,
                     help="N plans along the Pareto front, from the fastest to the smallest."),
        click.option("--verify/--no-verify", default=True, show_default=True,
                     help="Time each planned model end to end against the original."),
        click.option("--from-table", is_flag=True,
                     help="Plan from the latency table alone: measure nothing, verify nothing "
                          "(figures of another device: `cache import`, then --target)."),
        click.option("--target", metavar="NAME[@THREADS]",
                     help="With --from-table: the device of the table whose figures to plan "
                          "from (a part of its name), instead of this machine."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def plan_timing(o: dict[str, Any]) -> Any:
    """The timing options of plan (None with --no-time); with --from-table, nothing is
    measured and figures come from the table (another device's with --target)."""
    from dataclasses import replace

    timing = timing_request(o)
    if timing is None or not o["from_table"]:
        return timing
    return replace(timing, table_only=True, target=o["target"])


def plan_request(o: dict[str, Any]) -> Any:
    """The planner's options as a :class:`~convcost.jobs.PlanRequest`, checked now (the
    solver's extra too: one line, before any work)."""
    from convcost.jobs import CompareRequest, PlanRequest, plan_objective

    try:
        import scipy.optimize  # noqa: F401
    except ImportError as e:
        raise InputError("plan needs the plan extra (scipy's HiGHS solver): pip install "
                         "'convcost[plan]'") from e

    candidates = CompareRequest(o["variant_names"], o["groups"], layer_globs(o),
                                o["kernel_sizes"] or (), True)
    from convcost.plan.costs import parse_limit

    limits = tuple((m, o[f"max_{m}"]) for m in ("params", "macs", "latency")
                   if o.get(f"max_{m}") is not None)
    for m, t in limits:
        parse_limit(m, t)
    keep = tuple(g.strip() for k in o["keep"] for g in k.split(",") if g.strip())
    if o["target"] is not None and not o["from_table"]:
        raise InputError("--target names a device of the latency table: it needs --from-table")
    if o["from_table"] and (not o["do_time"] or o["fresh"]):
        raise InputError("--from-table reads the latency table: drop --no-time and --fresh")
    req = PlanRequest(candidates, limits, o["minimize"], keep, o["frontier"],
                      o["verify"] and not o["from_table"], o["from_table"])
    if not o["do_time"] and (plan_objective(req) == "latency" or
                             any(m == "latency" for m, _ in limits)):
        raise InputError("--no-time: a plan on latency needs timing; drop --no-time, or plan "
                         "on counts alone (--minimize params or macs, no --max-latency)")
    if not o["do_time"] and req.frontier > 1:
        raise InputError("--frontier runs from the fastest plan to the smallest: it needs "
                         "timing (drop --no-time)")
    return req


def wide_option(f: Callable) -> Callable:
    return click.option("--wide", is_flag=True,
                        help="Keep every column on a terminal (narrow terminals drop the least "
                             "important ones and say which).")(f)


def layer_globs(o: dict[str, Any]) -> tuple[str, ...]:
    return tuple(g for item in o["layer_globs"] for g in item.split(",") if g)


def layer_request(o: dict[str, Any]) -> Any:
    """compare without a SOURCE: the built-in layer's options (SOURCE-only ones refused)."""
    from convcost.jobs import LayerRequest

    if layer_globs(o) or o["kernel_sizes"] or o["input_shape"] or o["model_only"] or o["no_model"] \
            or o["model_args"] or o["inputs"]:
        raise InputError("--layers, --kernel-size, --input-shape, --input, --model-only, "
                         "--no-model and --model-arg need a SOURCE")
    return LayerRequest(o["cin"], o["cout"], o["kernel"], o["size"], o["stride"], o["batch"],
                        o["groups"], o["variant_names"], not o["ignore_memory"])


def compare_request(o: dict[str, Any]) -> Any:
    """compare with a SOURCE: what to compare (the built-in layer's options refused)."""
    from convcost.jobs import CompareRequest

    if o["model_only"] and o["no_model"]:
        raise InputError("--model-only and --no-model exclude each other: the first prints only "
                         "the whole-model rows, the second skips them")
    ctx = click.get_current_context()
    given = [p for p in ("cin", "cout", "kernel", "size", "stride")
             if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
    if given:
        raise InputError(f"--{given[0].replace('cin', 'in').replace('cout', 'out')} "
                         "describes the built-in layer; with a SOURCE the layers come from it")
    return CompareRequest(o["variant_names"], o["groups"], layer_globs(o), o["kernel_sizes"] or (),
                          not o["no_model"])


def sweep_points(o: dict[str, Any]) -> list[tuple[int | None, Any]]:
    """The (batch, threads) points of a sweep, threads outermost; one point without a sweep.
    A thread sweep times: refused with --no-time; plan takes one point."""
    batches = o["batch"] if isinstance(o["batch"], tuple) else (o["batch"],)
    threads = o["threads"] if isinstance(o["threads"], tuple) else (o["threads"],)
    if len(threads) > 1 and not o["do_time"]:
        raise InputError(f"--threads {','.join(map(str, threads))} is a timing sweep: drop "
                         "--no-time")
    return [(b, t) for t in threads for b in batches]


def single_point(o: dict[str, Any], command: str) -> None:
    """Commands without sweeps (plan) refuse a list of batch sizes or thread counts."""
    for name in ("batch", "threads"):
        if isinstance(o.get(name), tuple):
            what = "batch size" if name == "batch" else "thread count"
            raise InputError(f"--{name} {','.join(map(str, o[name]))}: {command} takes one "
                             f"{what}; sweeps are for analyze and compare")
