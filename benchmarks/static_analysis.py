"""Static analysis speed: `convcost analyze` (JSON, no timing) vs fvcore's FlopCountAnalysis.

Both build the same ResNet-50-sized model (examples/models.py:ResNet50, 1x3x224x224) and count
it, interleaved, in one process; the median of each is compared (fvcore: construct the model,
FlopCountAnalysis total/by_module/by_operator; convcost: load the source, record shapes during
fvcore's trace, count, build rows, render JSON). The whole command (a fresh
`convcost analyze ... -f json` process, imports included) is timed too.
Goals: convcost's own work adds at most 25% over fvcore's; the command finishes within 5 s.

    python benchmarks/static_analysis.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import environment, write_section  # noqa: E402


def fvcore_direct() -> int:
    """What a user writes without convcost: build the model, run FlopCountAnalysis."""
    from fvcore.nn import FlopCountAnalysis

    from examples.models import ResNet50

    model = ResNet50().eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fa = FlopCountAnalysis(model, (x,))
        fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        fa.by_module()
        fa.by_operator()
        return int(fa.total())


def convcost_pipeline(source: str) -> int:
    from convcost.counting.analysis import analyze_model
    from convcost.report.analyze import render_analysis
    from convcost.sources.load import load_source

    loaded = load_source(source)
    report = analyze_model(loaded.model, loaded.inputs, source=source, name=loaded.name)
    render_analysis(report, "json")
    return report.macs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    source = f"{ROOT}/examples/models.py:ResNet50"
    convcost_pipeline(source), fvcore_direct()  # warm-up: imports, allocator
    t_fv, t_cc = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fvcore_direct()
        t_fv.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        convcost_pipeline(source)
        t_cc.append(time.perf_counter() - t0)
    cmd = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "convcost", "analyze", source, "-f", "json"],
                       check=True, capture_output=True)
        cmd.append(time.perf_counter() - t0)
    fv, cc, wall = statistics.median(t_fv), statistics.median(t_cc), statistics.median(cmd)
    overhead = cc / fv - 1
    body = (
        "## Static analysis: `convcost analyze` vs fvcore (issue 3)\n\n" + environment() +
        f"- model: examples/models.py:ResNet50, input 1x3x224x224, {args.repeats} interleaved "
        "repeats, median\n\n"
        "| measurement | median (s) | ratio |\n|---|---:|---:|\n"
        "| fvcore direct: build model + FlopCountAnalysis (total, by_module, by_operator) | "
        f"{fv:.3f} | 1.00 |\n"
        f"| convcost pipeline: load source, shapes + fvcore, rows, JSON | {cc:.3f} | {cc / fv:.2f} |\n"
        f"| whole command `convcost analyze ... -f json` (new process) | {wall:.3f} | |\n\n"
        f"convcost's own work: {100 * overhead:+.1f}% over fvcore (goal: at most +25%); "
        f"the command: {wall:.2f} s (goal: within 5 s). "
        f"{'Both goals met.' if overhead <= 0.25 and wall <= 5 else 'GOAL MISSED.'}\n")
    print(body)
    if not args.no_write:
        write_section("static-analysis", body)


if __name__ == "__main__":
    main()
