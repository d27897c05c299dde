"""Eager PyTorch (oneDNN) against XNNPACK through ExecuTorch, side by side (issue 26).

For 1 and 2 threads, each in a fresh process with an empty latency table:
- `convcost compare --batch 1 --backend eager,executorch` of the built-in layer (64->64 3x3 on
  56x56; dense, grouped g=2,4,8, depthwise, separable), and
- `convcost compare examples/models.py:MobileNetV2 --model-only --batch 1` (the whole model
  with each variant substituted for its convs; the per-layer kernels are timed too, for the
  'whole model vs its convs alone' line),

both backends timed in the same run (paired ratios per backend: variant / original, with
their 95% intervals). Writes the section 'xnnpack' of docs/benchmarks.md: per variant the MACs
ratio, each backend's latency and ratio, and the share of operator nodes XNNPACK took.

    python benchmarks/xnnpack.py [--threads 1,2] [--layer-budget 120] [--model-budget 900]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import environment, run_json, write_section  # noqa: E402

CASES = {
    "built-in layer (64->64 3x3, 56x56, batch 1)": (["compare", "--batch", "1"], "layer"),
    "MobileNetV2 (whole model, 224x224, batch 1)": (
        ["compare", "examples/models.py:MobileNetV2", "--model-only", "--batch", "1"], "model"),
}
BACKENDS = ("eager", "executorch")


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} us" if v < 1 else f"{v:.2f} ms"


def _ratio(f: dict) -> str:
    if f.get("latency_source") == "same":
        return "x1 (same kernel)"
    r, ci = f.get("ratio_latency"), f.get("latency_ratio_ci")
    if r is None:
        return "-"
    text = f"x{r:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")
    return text + (" (busy)" if f.get("busy") else "")


def _nodes(f: dict) -> str:
    lo = (f.get("timing") or {}).get("lowering")
    if not lo:
        return "-"
    total = lo["delegated_nodes"] + lo["portable_nodes"]
    left = f" (portable: {', '.join(lo['portable_ops'])})" if lo["portable_ops"] else ""
    return f"{lo['delegated_nodes']}/{total}{left}"


def table(d: dict) -> str:
    rows = [d["baseline"], *d["variants"]]
    head = ("| variant | MACs | MACs ratio | eager | eager ratio [95% CI] | XNNPACK | "
            "XNNPACK ratio [95% CI] | XNNPACK / eager | nodes on XNNPACK |")
    out = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        e, x = (r.get("backends") or {}).get("eager", {}), (r.get("backends") or {}).get(
            "executorch", {})
        both = e.get("latency_ms") and x.get("latency_ms")
        speed = f"x{x['latency_ms'] / e['latency_ms']:.2f}" if both else "-"
        macs = f"{r['macs'] / 1e6:.1f}M"
        out.append(f"| {r['label']} | {macs} | x{r['ratio']['macs']:.3g} | "
                   f"{_ms(e.get('latency_ms'))} | {_ratio(e) if r is not rows[0] else 'baseline'}"
                   f" | {_ms(x.get('latency_ms'))} | "
                   f"{_ratio(x) if r is not rows[0] else 'baseline'} | {speed} | {_nodes(x)} |")
    return "\n".join(out)


def conditions(d: dict, run: dict) -> str:
    t = d.get("timing") or {}
    m = t.get("machine") or {}
    fp = (t.get("backends") or {}).get("executorch", {}).get("fingerprint", {})
    b = t.get("backends") or {}
    setup = b.get("executorch", {}).get("setup_s")
    return (f"exit {run['rc']}, {run['wall_s']:.0f} s wall; executorch {fp.get('version')} "
            f"({fp.get('provider')}), setup (export + lowering + load) {setup:.1f} s outside the "
            f"timings; busy windows {m.get('busy_windows')}/{m.get('windows')} "
            f"(other tasks' mean load {m.get('others_cores_mean')} cores); "
            f"failures: {len(t.get('failures') or [])}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--layer-budget", type=float, default=120)
    ap.add_argument("--model-budget", type=float, default=900)
    a = ap.parse_args(argv)
    parts = ["## Eager vs XNNPACK (ExecuTorch): the runtime a phone uses (issue 26)", "",
             environment(), "`python benchmarks/xnnpack.py`: each case in a fresh process with "
             "an empty latency table, both backends timed in the same run. Latency: median per "
             "call; ratios: variant / original, paired rounds, 95% bootstrap interval; "
             "*XNNPACK / eager*: the two medians' quotient (not paired: the backends run one "
             "after the other). A shared, noisy 2-core VM: '(busy)' marks a ratio measured "
             "while other tasks competed.", ""]
    for threads in a.threads.split(","):
        for case, (args, kind) in CASES.items():
            budget = a.layer_budget if kind == "layer" else a.model_budget
            with tempfile.TemporaryDirectory() as cache:
                run, d = run_json([*args, "--backend", ",".join(BACKENDS), "--threads", threads,
                                   "--time-budget", str(budget)], cache)
            parts += [f"### {case}, {threads} thread(s)", ""]
            if d is None:
                parts += [f"failed: exit {run['rc']}: {run.get('error')}", ""]
                continue
            parts += [table(d), "", f"- {conditions(d, run)}", ""]
            print(f"{case}, {threads} thread(s): exit {run['rc']}, {run['wall_s']:.0f} s",
                  file=sys.stderr)
    write_section("xnnpack", "\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
