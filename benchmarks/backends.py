"""What one `compare` costs per backend, and what fails to export or compile (issue 14).

For each backend (eager, inductor, onnxruntime, openvino, executorch; those not installed are
listed as such), in a fresh process with an empty latency table:
- `convcost compare -f json` of the built-in layer (64->64 3x3 on 56x56, batch 32, groups
  1,2,4,8), and
- `convcost compare examples/models.py:MobileNetV2 --groups 1,2,4 -f json --no-model`
  (its 52 convs and their variants, each kernel on the backend),

recording the wall time of the whole command, the setup (compile / export) and timing seconds
the report gives, the kernels measured, failed and left over budget, and each failure's reason.
A run that left kernels over budget (inductor compiles each kernel for about a second) is
repeated once with ten times the budget. Results go to docs/benchmarks.md (section "backends").

    python benchmarks/backends.py [--time-budget 40] [--backends eager,onnxruntime]
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
    "built-in layer": ["compare", "--groups", "1,2,4,8"],
    "MobileNetV2 (per layer)": ["compare", "examples/models.py:MobileNetV2", "--groups", "1,2,4",
                                "--no-model"],
}


def run_case(args: list[str], backend: str, budget: float) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        out, d = run_json([*args, "--backend", backend, "--time-budget", str(budget)], cache)
    if d is None:
        return out
    b = d["timing"]["backends"][backend]
    out.update(setup_s=b["setup_s"], timing_s=b["timing_s"], measured=b["measured"],
               failed=b["failed"], over_budget=b["not_measured_budget"],
               fingerprint=b["fingerprint"], failures=d["timing"]["failures"])
    return out


def _row(name: str, case: str, budget: float, r: dict) -> str:
    if "error" in r:
        return (f"| {name} | {case} | {budget:g} | {r['wall_s']:.1f} | - | - | - | - | "
                f"exit {r['rc']}: {r['error']} |")
    fails = [f for f in r["failures"] if "not measured" not in f]
    text = "; ".join(fails[:3]) + (" ..." if len(fails) > 3 else "")
    return (f"| {name} | {case} | {budget:g} | {r['wall_s']:.1f} | {r['setup_s']:.1f} | "
            f"{r['timing_s'] - r['setup_s']:.1f} | {r['measured']} | {r['failed']} | "
            f"{r['over_budget']} | exit {r['rc']}" + (f": {text}" if text else "") + " |")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-budget", type=float, default=40.0)
    ap.add_argument("--backends", default="eager,inductor,onnxruntime,openvino,executorch")
    a = ap.parse_args(argv)
    from convcost.timing.backends import BACKENDS

    rows, notes, fps = [], [], {}
    for name in a.backends.split(","):
        why = BACKENDS[name].unavailable("cpu")
        if why:
            notes.append(f"- {name}: not run ({why})")
            continue
        for case, args in CASES.items():
            budget = a.time_budget
            while True:
                print(f"{name}: {case}, budget {budget:g} s ...", file=sys.stderr, flush=True)
                r = run_case(args, name, budget)
                print(f"  {r}", file=sys.stderr)
                rows.append(_row(name, case, budget, r))
                if "error" in r:
                    break
                fps[name] = r["fingerprint"]
                if not r["over_budget"] or budget > a.time_budget:
                    break
                budget = a.time_budget * 10  # once more with room for every kernel's setup
    body = ["## Backends: one `compare` per backend (issue 14)", "", environment(),
            f"`python benchmarks/backends.py --time-budget {a.time_budget:g}`: each command in a "
            "fresh process with an empty latency table (every kernel set up and measured). "
            "*wall*: the whole command; *setup*: compile / export / session creation, reported "
            "apart; *timing*: the rest of the timing phase.", "",
            "A run with kernels left over budget is repeated with ten times the budget.", "",
            "| backend | case | budget s | wall s | setup s | timing s | kernels measured | "
            "failed | over budget | result |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|", *rows, ""]
    for name, fp in fps.items():
        body.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in fp.items()))
    body += notes
    write_section("backends", "\n".join(body))
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
