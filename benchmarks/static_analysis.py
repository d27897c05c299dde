"""Static analysis speed: `convcost analyze` (JSON, no timing) vs fvcore's FlopCountAnalysis.

Both build the same ResNet-50-sized model (examples/models.py:ResNet50, 1x3x224x224) and count
it, interleaved, in one process; the median of each is compared (fvcore: construct the model,
FlopCountAnalysis total/by_module/by_operator; convcost: load the source, record shapes during
fvcore's trace, count, build rows, render JSON). The whole command (a fresh
`convcost analyze ... --no-time -f json` process, imports included) is timed next to
`python -c "import torch"`, and the scaling of the whole command on 10 to 5,000-layer specs.
Goals: convcost's own work adds at most 25% over fvcore's; the ResNet-50 command within import
torch + 1 s; linear scaling, 5,000 layers under 10 s.

    python benchmarks/static_analysis.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import environment, write_section  # noqa: E402
from benchmarks._specs import table_spec  # noqa: E402


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


def wall(cmd: list[str], repeats: int) -> float:
    """Median wall time of a fresh process running ``cmd``."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


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
    py = sys.executable
    t_torch = wall([py, "-c", "import torch"], 5)
    t_cmd = wall([py, "-m", "convcost", "analyze", source, "--no-time", "-f", "json"], 5)
    fv, cc = statistics.median(t_fv), statistics.median(t_cc)
    overhead = cc / fv - 1
    body = (
        "## Static analysis: `convcost analyze --no-time` vs fvcore (issues 3, 11)\n\n"
        + environment() +
        f"- model: examples/models.py:ResNet50, input 1x3x224x224, {args.repeats} interleaved "
        "repeats, median; whole commands: median of 5 fresh processes\n\n"
        "| measurement | median (s) | ratio |\n|---|---:|---:|\n"
        "| fvcore direct: build model + FlopCountAnalysis (total, by_module, by_operator) | "
        f"{fv:.3f} | 1.00 |\n"
        f"| convcost pipeline: load source, shapes + fvcore, rows, JSON | {cc:.3f} | {cc / fv:.2f} |\n"
        f"| `python -c \"import torch\"` (new process) | {t_torch:.3f} | |\n"
        f"| `convcost analyze ResNet50 --no-time -f json` (new process) | {t_cmd:.3f} | "
        f"import torch + {t_cmd - t_torch:.2f} s |\n\n"
        f"convcost's own work: {100 * overhead:+.1f}% over fvcore (goal: at most +25%, "
        f"{'met' if overhead <= 0.25 else 'NOT met'}); the command: import torch + "
        f"{t_cmd - t_torch:.2f} s (goal: at most + 1 s, "
        f"{'met' if t_cmd - t_torch <= 1 else 'NOT met'}).\n")
    rows = ["| layers | counter | `analyze --no-time -f json` (s) | per layer over 10 layers (ms) |",
            "|---:|---|---:|---:|"]
    per = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10, 100, 1000, 5000):
            spec = table_spec(n, Path(tmp))
            t = wall([py, "-m", "convcost", "analyze", str(spec), "--no-time", "-f", "json"],
                     3 if n < 5000 else 1)
            counter = json.loads(subprocess.run(
                [py, "-m", "convcost", "analyze", str(spec), "--no-time", "-f", "json"],
                check=True, capture_output=True, text=True, cwd=ROOT).stdout)["counter"]
            per[n] = t
            # per added layer, over the 10-layer command (import torch is no baseline here: it
            # pays torch's teardown at exit, which convcost's commands skip)
            extra = "-" if n == 10 else f"{1e3 * (t - per[10]) / (n - 10):.2f}"
            rows.append(f"| {n:,} | {counter} | {t:.2f} | {extra} |")
    slope = (per[5000] - per[1000]) / 4000 * 1e3
    body += ("\n### Scaling: table specs of N independent convs (benchmarks/_specs.py)\n\n"
             + "\n".join(rows) + f"\n\nFrom 1,000 to 5,000 layers: {slope:.2f} ms per added layer "
             f"(linear); 5,000 layers in {per[5000]:.1f} s (goal: under 10 s, "
             f"{'met' if per[5000] < 10 else 'NOT met'}). `--count-on auto` counts a spec on meta "
             "tensors from 800 modules or 10 G MACs (closed form): nothing is computed, the fixed "
             "cost is torch's one-time import of sympy on the first meta kernel's `torch._check` "
             "(about 2.7 s here; torch._dynamo, another 4 s, is no longer imported) and the rest "
             "is "
             "linear in the number of layers (YAML, module construction, the counting pass, "
             "rendering); below that, fvcore's trace of a real forward is faster.\n")
    print(body)
    if not args.no_write:
        write_section("static-analysis", body)


if __name__ == "__main__":
    main()
