"""Timing fidelity: convcost's median next to reference harnesses, side by side in one run.

CPU: convcost vs torch.utils.benchmark (``Timer.adaptive_autorange``), same callables, same
thread count. CUDA: convcost vs triton's ``do_bench`` (median) and vs the torch profiler's summed
CUDA kernel time per call; the spread of convcost's median over 5 repeated runs; and the wall
time of a full ``compare`` of ResNet-50's convs (g = 1, 2, 4, 8, 32, depthwise, separable).
Goals: agreement within 5% for kernels of 20 us and more; spread within 3% on the GPU; the
ResNet-50 compare within 60 s on an H100.

    python benchmarks/timing_fidelity.py [--device auto|cpu|cuda] [--dtype fp16]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import environment, write_section  # noqa: E402
from convcost.timing.device import Numerics, numerics, resolve_device  # noqa: E402
from convcost.timing.engine import make_input, prepare_module  # noqa: E402
from convcost.timing.harness import TimingConfig, measure_one  # noqa: E402
from convcost.variants.catalogue import ConvLayer, Variant, build  # noqa: E402

CASES = [  # (label, layer, variant)
    ("3x3 64->64 56x56 dense", ConvLayer(64, 64, (3, 3), padding=(1, 1), in_hw=(56, 56)), "dense"),
    ("3x3 64->64 56x56 g=4", ConvLayer(64, 64, (3, 3), padding=(1, 1), in_hw=(56, 56)), "grouped4"),
    ("3x3 64->64 56x56 g=32", ConvLayer(64, 64, (3, 3), padding=(1, 1), in_hw=(56, 56)), "grouped32"),
    ("3x3 64->64 56x56 depthwise", ConvLayer(64, 64, (3, 3), padding=(1, 1), in_hw=(56, 56)),
     "depthwise"),
    ("3x3 128->128 28x28 separable", ConvLayer(128, 128, (3, 3), padding=(1, 1), in_hw=(28, 28)),
     "separable"),
    ("1x1 256->256 28x28 dense", ConvLayer(256, 256, (1, 1), in_hw=(28, 28)), "dense"),
]


def _variant(name: str) -> Variant:
    if name.startswith("grouped"):
        return Variant("grouped", int(name[7:]))
    return Variant(name)


def _case(layer: ConvLayer, vname: str, batch: int, cfg: TimingConfig):
    layer = ConvLayer(layer.cin, layer.cout, layer.kernel, layer.stride, layer.padding,
                      layer.dilation, 1, False, layer.in_hw, batch)
    m = prepare_module(build(layer, _variant(vname)), cfg)
    x = make_input(layer.input_shape, cfg)
    return (lambda: m(x)), layer


def cpu_reference(fn, threads: int) -> float:
    from torch.utils.benchmark import Timer

    t = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return t.adaptive_autorange(threshold=0.03, min_run_time=0.2, max_run_time=5.0).median * 1e3


def gpu_references(fn) -> tuple[float | None, float | None]:
    """(triton do_bench median, profiler summed CUDA kernel time per call), in ms."""
    tri = None
    try:
        from triton.testing import do_bench

        tri = float(do_bench(fn, warmup=25, rep=200, return_mode="median"))
    except Exception as e:  # triton missing or failing: reported as '-'
        print(f"triton do_bench unavailable: {e}", file=sys.stderr)
    from torch.profiler import ProfilerActivity, profile

    n = 50
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    total_us = sum(e.device_time_total for e in prof.key_averages()
                   if getattr(e, "device_type", None) is not None
                   and "cuda" in str(e.device_type).lower() and e.device_time_total > 0)
    return tri, (total_us / n / 1e3 if total_us else None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default=None, help="default fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--batch", type=int, default=None, help="default 32 on CUDA, 4 on CPU")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    cuda = dev.startswith("cuda")
    dtype = args.dtype or ("fp16" if cuda else "fp32")
    batch = args.batch or (32 if cuda else 4)
    threads = torch.get_num_threads()
    n = Numerics(dev, dtype, channels_last=cuda and dtype in ("fp16", "bf16"), threads=threads)
    cfg = TimingConfig(numerics=n, max_time_s=2.0)
    rows = []
    with numerics(n), torch.inference_mode():
        for label, layer, vname in CASES:
            fn, _ = _case(layer, vname, batch, cfg)
            if cuda:
                meds = [measure_one(fn, cfg).median_ms for _ in range(args.repeats)]
                ours = statistics.median(meds)
                spread = (max(meds) - min(meds)) / ours
                tri, prof = gpu_references(fn)
                rows.append((label, ours, tri, prof, spread))
            else:  # alternate the two harnesses so drift on a shared machine hits both alike
                ours_l, ref_l = [], []
                for _ in range(3):
                    ours_l.append(measure_one(fn, cfg).median_ms)
                    ref_l.append(cpu_reference(fn, threads))
                rows.append((label, statistics.median(ours_l), statistics.median(ref_l), None,
                             (max(ours_l) - min(ours_l)) / statistics.median(ours_l)))
    lines = [f"## Timing fidelity on {'CUDA' if cuda else 'CPU'} (issue 5)\n", environment(),
             f"- dtype {dtype}, batch {batch}, memory format {n.memory_format}, "
             f"{threads} CPU threads; convcost default protocol (cap 2 s per measurement)\n"]
    if cuda:
        lines.append("| layer / variant | convcost median | triton do_bench | diff | profiler kernel "
                     "sum | diff | spread of 5 medians |\n|---|---:|---:|---:|---:|---:|---:|")
        for label, ours, tri, prof, spread in rows:
            d1 = f"{100 * (ours / tri - 1):+.1f}%" if tri else "-"
            d2 = f"{100 * (ours / prof - 1):+.1f}%" if prof else "-"
            lines.append(f"| {label} | {ours * 1e3:.1f} us | "
                         f"{'-' if tri is None else f'{tri * 1e3:.1f} us'} | {d1} | "
                         f"{'-' if prof is None else f'{prof * 1e3:.1f} us'} | {d2} | "
                         f"{100 * spread:.1f}% |")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "convcost", "compare",
                               f"{ROOT}/examples/models.py:ResNet50", "--groups", "1,2,4,8,32",
                               "--variants", "grouped,depthwise,separable", "--dtype", dtype,
                               "--batch", str(batch), "-f", "json", "-o", "/dev/null"],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        lines.append(f"\nFull `compare` of ResNet-50's 53 convs with g = 1, 2, 4, 8, 32, depthwise "
                     f"and separable, whole-model rows included, timed on {dev}: {wall:.1f} s "
                     f"(goal: within 60 s; exit code {proc.returncode}).")
    else:
        lines.append("Each harness ran 3 times, alternating; the table gives the median of the 3 "
                     "medians.\n")
        lines.append("| layer / variant | convcost median | torch.utils.benchmark adaptive_autorange "
                     "| diff | convcost spread of 3 |\n|---|---:|---:|---:|---:|")
        for label, ours, ref, _, spread in rows:
            lines.append(f"| {label} | {ours:.3f} ms | {ref:.3f} ms | {100 * (ours / ref - 1):+.1f}% "
                         f"| {100 * spread:.1f}% |")
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        write_section(f"timing-fidelity-{'cuda' if cuda else 'cpu'}", body)


if __name__ == "__main__":
    main()
