"""Figures that hold on a busy machine, or say that they cannot (issue 22).

Runs each case 3 times on the quiet machine and 3 times beside one busy process
(`python -c "while True: pass"`), interleaved (quiet, busy, quiet, busy, ...), each in a fresh
process with an empty latency table, and compares:

- coverage: the share of the busy runs' latency ratios whose 95% interval contains the quiet
  runs' median ratio, or that are marked busy (and so withheld from the headline); goal >= 90%;
- contradictions: busy-run headlines (quoted, not withheld) that say faster where the quiet
  runs say slower, or the reverse; goal 0;
- precision: the quiet runs' interval widths (relative to the ratio), next to the widths of the
  quiet runs in the issue's table (the same 2-core machine, another day); and, side by side on
  the same rounds, the plain bootstrap's width against the width across epochs that reports now
  quote; goal within 1.5x;
- wall time of the main job on the quiet machine; goal within 1.2x of 7-10 s;
- what the busy marks said: the share of rows marked busy in busy and in quiet runs.

Cases: the main job (`convcost compare --groups 1,2,4,8`) and a MobileNetV2 compare
(`examples/models.py:MobileNetV2 --groups 1,2 --no-model`). Results go to docs/benchmarks.md
(section "busy-machine").

    python benchmarks/busy_machine.py [--runs 3] [--cases main,mobilenet]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import environment, run_json, write_section  # noqa: E402

CASES = {
    "main": ["compare", "--groups", "1,2,4,8"],
    "mobilenet": ["compare", "examples/models.py:MobileNetV2", "--groups", "1,2", "--no-model",
                  "--time-budget", "60"],
}
# the quiet runs' intervals in issue 22's table (x0.766 [0.762, 0.789], ...): relative widths
ISSUE_QUIET_WIDTHS = {"grouped g=2": [0.035, 0.065, 0.045], "grouped g=4": [0.093, 0.049, 0.109],
                      "grouped g=8": [0.038, 0.055, 0.043], "depthwise": [0.045, 0.065, 0.042],
                      "separable": [0.034, 0.074, 0.029]}


def run_once(args: list[str], busy: bool) -> dict:
    """One fresh run of convcost (an empty latency table), beside a busy loop when ``busy``."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if hog is not None:
            time.sleep(0.5)
        with tempfile.TemporaryDirectory() as cache:
            out, d = run_json(args, cache)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if d is None:
        return {**out, "rows": {}}
    rows = {}
    for lc in d.get("layers") or [{"name": "layer", "variants": d["variants"]}]:
        for v in lc["variants"]:
            if v.get("ratio", {}).get("latency") is None or v.get("latency_source") == "same":
                continue
            rows[f"{lc['name']} {v['label']}"] = {
                "ratio": v["ratio"]["latency"], "ci": v["latency_ratio_ci"],
                "busy": bool(v.get("latency_busy"))}
    return {**out, "rows": rows,
            "threads": d.get("device", {}).get("threads"),
            "machine": d.get("timing", {}).get("machine", {})}


def quoted(r: dict) -> bool:
    """The headline would quote it: not busy, interval under half the ratio."""
    lo, hi = r["ci"]
    return not r["busy"] and (hi - lo) < 0.5 * r["ratio"]


def analyse(quiet: list[dict], busy: list[dict]) -> dict:
    keys = sorted(set.intersection(*(set(q["rows"]) for q in quiet))) if quiet else []
    qmed = {k: statistics.median(q["rows"][k]["ratio"] for q in quiet) for k in keys}
    covered = total = contradict = withheld = 0
    for b in busy:
        for k in keys:
            r = b["rows"].get(k)
            if r is None:
                continue
            total += 1
            lo, hi = r["ci"]
            inside = lo <= qmed[k] <= hi
            withheld += r["busy"]
            covered += inside or r["busy"]
            if quoted(r) and (r["ratio"] < 1) != (qmed[k] < 1) and not inside:
                contradict += 1
    widths = {k: [(q["rows"][k]["ci"][1] - q["rows"][k]["ci"][0]) / q["rows"][k]["ratio"]
                  for q in quiet] for k in keys}
    quiet_busy = sum(r["busy"] for q in quiet for r in q["rows"].values())
    quiet_rows = sum(len(q["rows"]) for q in quiet)
    return {"keys": keys, "quiet_median": qmed, "coverage": covered / total if total else None,
            "rows": total, "withheld": withheld, "contradictions": contradict,
            "widths": widths, "quiet_busy": quiet_busy, "quiet_rows": quiet_rows,
            "quiet_wall": [q["wall_s"] for q in quiet], "busy_wall": [b["wall_s"] for b in busy]}


def precision(runs: int) -> list[tuple[str, int, float, float]]:
    """The interval's width, plain bootstrap vs across epochs (the hull), on the same rounds:
    the built-in layer's six kernels measured paired in one process, ``runs`` times (quiet).
    Returns (variant, rounds, plain width, epoch width), widths relative to the ratio."""
    import torch

    from convcost.timing.device import Numerics, numerics
    from convcost.timing.harness import Bench, TimingConfig, measure_group
    from convcost.timing.stats import bootstrap_median_ci, epoch_bootstrap_ci, round_ratios
    from convcost.variants.catalogue import build, conv_module, expand_variants
    from convcost.variants.compare import DEFAULT_LAYER as L

    cfg = TimingConfig(numerics=Numerics("cpu", "fp32", False, None))
    vs = expand_variants(("grouped", "depthwise", "separable"), (2, 4, 8))
    mods = [conv_module(L).eval()] + [build(L, v).eval() for v in vs]
    x = torch.randn(L.input_shape)
    out = []
    with numerics(cfg.numerics), torch.inference_mode():
        for _ in range(runs):
            res = measure_group([Bench(lambda m=m: m(x), cfg) for m in mods], paired=True)
            for i, v in enumerate(vs, 1):
                r = round_ratios(res.rounds[0], res.rounds[i])
                med = statistics.median(r)
                (lo, hi), (elo, ehi) = bootstrap_median_ci(r), epoch_bootstrap_ci(r)
                out.append((v.label, len(r), (hi - lo) / med, (ehi - elo) / med))
    return out


def section(results: dict[str, tuple[list[dict], list[dict], dict]],
            widths: list[tuple[str, int, float, float]]) -> str:
    out = ["## Busy machine: figures that hold or say they cannot (issue 22)", "",
           environment(),
           "This 2-core VM is shared: its neighbours move memory-bound kernels even when "
           "nothing of ours runs, so quiet runs themselves carry that noise. 'busy' = one "
           "`python -c \"while True: pass\"` beside each run. Runs interleaved quiet/busy, each "
           "in a fresh process with an empty latency table, `--threads auto` (the default). "
           "'issue's width' is the median quiet width in issue 22's table, measured on another "
           "day on this VM (the plain interval, before epochs): the last table compares the "
           "two interval rules on the same rounds, which is the fair comparison.", ""]
    for name, (quiet, busy, a) in results.items():
        out += [f"### `convcost {' '.join(CASES[name])}`", ""]
        if a["coverage"] is None:
            out += ["no comparable rows (see the runs' errors)", ""]
            continue
        out += [f"- coverage under load: {a['coverage']:.0%} of {a['rows']} busy-run ratios "
                f"have the quiet median inside their interval or are marked busy (goal >= 90%); "
                f"{a['withheld']} marked busy and withheld",
                f"- contradicting headlines on the busy runs: {a['contradictions']} (goal 0)",
                f"- rows marked busy on the quiet runs: {a['quiet_busy']} of {a['quiet_rows']}",
                f"- wall time: quiet {', '.join(f'{w:.1f}' for w in a['quiet_wall'])} s; busy "
                f"{', '.join(f'{w:.1f}' for w in a['busy_wall'])} s",
                f"- threads chosen: quiet {[q.get('threads') for q in quiet]}, busy "
                f"{[b.get('threads') for b in busy]}", ""]
        shown = a["keys"] if len(a["keys"]) <= 12 else sorted(
            a["keys"], key=lambda k: -max(abs(b["rows"][k]["ratio"] / a["quiet_median"][k] - 1)
                                          for b in busy if k in b["rows"]))[:8]
        if len(shown) < len(a["keys"]):
            out += [f"The {len(shown)} of {len(a['keys'])} rows that moved most under load:", ""]
        head = ["row", "quiet median", *[f"quiet {i + 1}" for i in range(len(quiet))],
                *[f"busy {i + 1}" for i in range(len(busy))], "quiet width", "issue's width"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for k in shown:
            cells = [k, f"x{a['quiet_median'][k]:.3f}"]
            for run in [*quiet, *busy]:
                r = run["rows"].get(k)
                cells.append("-" if r is None else
                             f"x{r['ratio']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
                             + (" busy" if r["busy"] else ""))
            w = a["widths"][k]
            label = k.split(" ", 1)[1] if " " in k else k
            iw = ISSUE_QUIET_WIDTHS.get(label) if name == "main" else None
            cells += [f"{statistics.median(w):.1%}",
                      f"{statistics.median(iw):.1%}" if iw else "-"]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    if widths:
        out += ["### Interval width: within rounds vs across epochs, on the same rounds", "",
                "The built-in layer's kernels measured paired in one process (quiet); for each "
                "ratio the plain bootstrap's width and the width across epochs (the hull "
                "reports quote), relative to the ratio.", "",
                "| variant | rounds | plain | across epochs | x |", "|---|---|---|---|---|"]
        out += [f"| {v} | {n} | {p:.1%} | {e:.1%} | {e / p if p else 1:.2f} |"
                for v, n, p, e in widths]
        ratios = [e / p for _, _, p, e in widths if p]
        out += ["", f"Across epochs / plain: median {statistics.median(ratios):.2f}, max "
                f"{max(ratios):.2f} (goal: quiet widths within 1.5x).", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cases", default="main,mobilenet")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-precision", dest="precision", action="store_false",
                    help="skip the plain vs across-epochs interval comparison")
    args = ap.parse_args()
    results = {}
    for name in args.cases.split(","):
        quiet, busy = [], []
        for i in range(args.runs):
            quiet.append(run_once(CASES[name], busy=False))
            busy.append(run_once(CASES[name], busy=True))
            print(f"{name} round {i + 1}: quiet {quiet[-1]['wall_s']:.1f} s, busy "
                  f"{busy[-1]['wall_s']:.1f} s", file=sys.stderr)
        results[name] = (quiet, busy, analyse(quiet, busy))
    text = section(results, precision(args.runs) if args.precision else [])
    print(text)
    if not args.no_write:
        write_section("busy-machine", text)


if __name__ == "__main__":
    main()
