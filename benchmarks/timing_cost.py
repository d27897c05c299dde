"""What a timed run costs, and how steady its ratios are (issue 10).

1. Wall time of `convcost compare examples/models.py:ResNet50 -f json` (timed, the default):
   - before: the per-measurement protocol as it was before the timing engine (the code of commit
     BEFORE_COMMIT, extracted from git into a temporary folder and run from there);
   - after, cold: the default time budget, an empty latency table;
   - after, warm: the same command again (the latency table filled by the cold run);
   - after, cold again (a second empty table), to compare the ratios of two cold runs.
2. Agreement of two cold runs: median relative difference of the per-layer latency ratios, over
   the rows whose interval supports a headline in both runs.
3. Paired vs separate: on the built-in layer's variants, the same interleaved rounds give two
   estimates of each latency ratio, the median of per-round ratios (paired) and the ratio of the
   two medians (separate); each group is measured REPEATS times and the spread of each estimate
   over the repeats is compared. Once on the machine as it is, once with a load generator that
   switches a busy process on and off (the machine's speed drifts during the rounds).

Goals: cold run >= 8x faster than before; warm rerun < 10 s; two cold runs agree within 15%;
the paired estimate at least 2x steadier than separate medians (under drift).

    python benchmarks/timing_cost.py [--skip-before] [--repeats 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import environment, write_section  # noqa: E402

BEFORE_COMMIT = "3ddd4b6"  # the last commit with the per-measurement protocol
SOURCE = "examples/models.py:ResNet50"
DRIFT_PERIOD_S = 3.0  # the load generator: busy 3 s, idle 3 s, on every core (slow drift)


READING = """
**Reading these figures.** The before/after speed goal (8x) was set against the 743 s that the
issue measured for the old protocol on the earlier development host at a noisy time: there,
nearly every one of its ~330 measurements ran to its 1 s cap. On this host the old protocol's
measurements mostly converge, so it takes 30-65 s, and a load generator does not reproduce the
743 s; the speed-up measured here is 1-2x cold and 7-15x warm, and the 8x goal could not be
verified. What the engine guarantees is the bound: a cold run's timing never exceeds
`--time-budget` (40 s), whatever the noise, where the old protocol's cost grew with it (up to
1 s x every measurement). Pairing: within one interleaved group measurement, rounds already
expose baseline and variant to the same conditions, so the separate medians of the same samples
are nearly as steady as the paired ratio (1.7x); the paired estimate is 3x steadier than
measuring the callables one after the other, which is what the old protocol's separate medians
amounted to under slow drift."""


def run_cmd(args: list[str], *, cache: Path, pythonpath: str) -> tuple[float, dict]:
    env = {**os.environ, "CONVCOST_CACHE_DIR": str(cache), "PYTHONPATH": pythonpath}
    out = cache / "report.json"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "convcost", *args, "-f", "json", "-o", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 4):
        raise SystemExit(f"{args} failed ({p.returncode}): {p.stderr[-2000:]}")
    return wall, json.loads(out.read_text())


def extract_before(dest: Path) -> Path:
    tar = dest / "before.tar"
    with tar.open("wb") as f:
        subprocess.run(["git", "archive", BEFORE_COMMIT, "convcost"], cwd=ROOT, stdout=f,
                       check=True)
    with tarfile.open(tar) as t:
        t.extractall(dest / "before", filter="data")
    return dest / "before"


def layer_ratios(doc: dict) -> dict[tuple[str, str], tuple[float, list[float] | None]]:
    out = {}
    for lay in doc.get("layers", []):
        for v in lay["variants"]:
            r = v["ratio"].get("latency")
            if r is not None and v.get("latency_source") != "same":
                out[(lay["name"], v["label"])] = (r, v.get("latency_ratio_ci"))
    return out


def supported(r: float, ci: list[float] | None) -> bool:
    return ci is not None and r > 0 and (ci[1] - ci[0]) / r < 0.5


# --------------------------------------------------------------------------- paired vs separate


def _burner(stop: mp.Event, period_s: float) -> None:  # type: ignore[valid-type]
    """Busy for period_s, idle for period_s, until stopped: a machine whose speed drifts."""
    while not stop.is_set():
        t_end = time.perf_counter() + period_s
        while time.perf_counter() < t_end:
            pass
        time.sleep(period_s)


class DriftingLoad:
    """Context manager: the load generator on every core (the machine's speed drifts)."""

    def __enter__(self) -> DriftingLoad:
        self.stop = mp.Event()
        self.procs = [mp.Process(target=_burner, args=(self.stop, DRIFT_PERIOD_S), daemon=True)
                      for _ in range(os.cpu_count() or 2)]
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(timeout=5)


def steadiness(repeats: int, drift: bool) -> dict[str, dict[str, list[float]]]:
    """Estimates of each variant's ratio, paired and separate, over ``repeats`` group
    measurements (same data for both estimators)."""
    import torch

    from convcost.timing.engine import make_input, prepare_module
    from convcost.timing.harness import Bench, TimingConfig, measure_group
    from convcost.timing.stats import paired_ratio, ratio_of_medians
    from convcost.variants.catalogue import ConvLayer, Variant, build

    layer = ConvLayer(64, 64, (3, 3), (1, 1), (1, 1), in_hw=(56, 56), batch=8)
    variants = [Variant("grouped", 4), Variant("depthwise"), Variant("separable")]
    cfg = TimingConfig(max_time_s=0.6)
    x = make_input(layer.input_shape, cfg)
    mods = [prepare_module(build(layer, Variant("dense", 1)), cfg)] + [
        prepare_module(build(layer, v), cfg) for v in variants]
    est: dict[str, dict[str, list[float]]] = {
        v.label: {"paired": [], "separate": [], "sequential": []} for v in variants}
    load = DriftingLoad() if drift else contextlib.nullcontext()
    with load, torch.inference_mode():
        for _ in range(repeats):
            benches = [Bench(lambda m=m: m(x), cfg) for m in mods]
            res = measure_group(benches, paired=True)
            for i, v in enumerate(variants, 1):
                est[v.label]["paired"].append(paired_ratio(res.rounds[0], res.rounds[i]).ratio)
                est[v.label]["separate"].append(
                    ratio_of_medians(benches[0].samples, benches[i].samples))
            # the same callables measured one after the other (separate measurements)
            alone = [measure_group([Bench(lambda m=m: m(x), cfg)]).measurements[0].median_ms
                     for m in mods]
            for i, v in enumerate(variants, 1):
                est[v.label]["sequential"].append(alone[i] / alone[0])
    return est


def rmad(v: list[float]) -> float:
    """Relative median absolute deviation of the repeats' estimates (robust spread)."""
    m = statistics.median(v)
    return statistics.median(abs(x - m) for x in v) / m


def error_to(ref: float, v: list[float]) -> float:
    """Median relative error of the estimates to a reference ratio."""
    return statistics.median(abs(x - ref) / ref for x in v)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-before", action="store_true",
                    help="Skip the (about 12 minute) run of the old protocol.")
    ap.add_argument("--skip-load", action="store_true",
                    help="Skip the before/after runs under the drifting load.")
    ap.add_argument("--repeats", type=int, default=8)
    a = ap.parse_args()
    here = str(ROOT)
    lines = [f"## Timing cost and steadiness (issue 10)\n\n{environment()}"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        results = {}
        if not a.skip_before:
            before = extract_before(tmp_p)
            (tmp_p / "c0").mkdir()
            results["before"] = run_cmd(["compare", SOURCE], cache=tmp_p / "c0",
                                        pythonpath=str(before))[0]
            print(f"before: {results['before']:.1f} s", flush=True)
        for name in ("c1", "c2"):
            (tmp_p / name).mkdir()
        results["cold"], doc1 = run_cmd(["compare", SOURCE], cache=tmp_p / "c1", pythonpath=here)
        print(f"cold: {results['cold']:.1f} s", flush=True)
        results["warm"], docw = run_cmd(["compare", SOURCE], cache=tmp_p / "c1", pythonpath=here)
        print(f"warm: {results['warm']:.1f} s", flush=True)
        results["cold2"], doc2 = run_cmd(["compare", SOURCE], cache=tmp_p / "c2", pythonpath=here)
        print(f"cold again: {results['cold2']:.1f} s", flush=True)
        if not a.skip_before and not a.skip_load:  # a noisy machine: both under the load
            for name in ("c3", "c4"):
                (tmp_p / name).mkdir()
            with DriftingLoad():
                results["before_load"] = run_cmd(["compare", SOURCE], cache=tmp_p / "c3",
                                                 pythonpath=str(before))[0]
                print(f"before, under load: {results['before_load']:.1f} s", flush=True)
                results["cold_load"], _ = run_cmd(["compare", SOURCE], cache=tmp_p / "c4",
                                                     pythonpath=here)
                print(f"cold, under load: {results['cold_load']:.1f} s", flush=True)
    eng = doc1["timing"]["engine"]
    lines.append(f"- command: `convcost compare {SOURCE} -f json` (timed, default options: "
                 f"variants grouped g=2,4,8, depthwise, separable; --time-budget "
                 f"{eng['time_budget_s']:g} s, --max-time 1 s)\n"
                 f"- cold run: {eng['unique_kernels']} unique kernels in {eng['groups']} groups "
                 f"for {sum(len(x['variants']) + 1 for x in doc1['layers']) + len(doc1['variants']) + 1} "
                 f"rows; warm run: {docw['timing']['engine']['cached']} of them from the table\n")
    lines.append("| run | wall time (s) | vs before |\n|---|---:|---:|")
    b = results.get("before")
    names = {"before": f"before (per-measurement protocol, commit {BEFORE_COMMIT})",
             "cold": "after, cold latency table", "warm": "after, warm latency table",
             "cold2": "after, cold again (second table)",
             "before_load": "before, under the drifting load (a noisy machine)",
             "cold_load": "after, cold, under the drifting load"}
    for k in ("before", "cold", "warm", "cold2", "before_load", "cold_load"):
        if k in results:
            ref = results.get("before_load") if k.endswith("_load") else b
            ratio = f"{ref / results[k]:.1f}x faster" if ref and not k.startswith("before") else ""
            lines.append(f"| {names[k]} | {results[k]:.1f} | {ratio} |")
    r1, r2 = layer_ratios(doc1), layer_ratios(doc2)
    both = [k for k in r1 if k in r2 and supported(*r1[k]) and supported(*r2[k])]
    diffs = [abs(r1[k][0] - r2[k][0]) / r1[k][0] for k in both]
    agree = statistics.median(diffs) if diffs else float("nan")
    mv = {v["label"]: v["ratio"]["latency"] for v in doc1["variants"]}
    mv2 = {v["label"]: v["ratio"]["latency"] for v in doc2["variants"]}
    lines.append(f"\nTwo cold runs: {len(both)} of {len(r1)} per-layer ratios support a headline "
                 f"in both; their median relative difference is {100 * agree:.1f}% "
                 f"(90th percentile {100 * sorted(diffs)[int(0.9 * (len(diffs) - 1))]:.1f}%). "
                 "Whole model, run 1 / run 2: "
                 + ", ".join(f"{k} x{mv[k]:.3f} / x{mv2.get(k, float('nan')):.3f}" for k in mv)
                 + ".\n")
    goals = []
    if b:
        goals.append(f"cold {b / results['cold']:.1f}x faster than before on the quiet machine, "
                     f"{results.get('before_load', float('nan')) / results.get('cold_load', 1):.1f}x "
                     "under load (goal >= 8x, set against the 743 s the issue measured on a noisy "
                     "machine): " + ("met under load" if results.get('before_load', 0) >= 8 *
                                     results.get('cold_load', float('inf')) else "NOT met"))
    goals.append(f"warm rerun {results['warm']:.1f} s (goal < 10 s): "
                 f"{'met' if results['warm'] < 10 else 'NOT met'}")
    goals.append(f"two cold runs agree within {100 * agree:.1f}% (goal 15%): "
                 f"{'met' if agree <= 0.15 else 'NOT met'}")
    quiet = steadiness(a.repeats, drift=False)
    drifting = steadiness(a.repeats, drift=True)
    lines.append(f"\nPaired vs separate: the built-in layer's variants at batch 8 (64->64 3x3 on "
                 f"56x56), {a.repeats} repeats, once on the machine as it is and once with a load "
                 f"generator switching a busy process on every core on and off every "
                 f"{DRIFT_PERIOD_S:g} s (slow drift, like a VM's neighbours). Three estimates of "
                 "each ratio per repeat: *paired* = median of per-round ratios of one interleaved "
                 "group measurement (what convcost reports); *separate* = median of the variant's "
                 "samples / median of the baseline's, from the same samples; *sequential* = the "
                 "same callables measured one after the other, alone. Spread = relative median "
                 "absolute deviation over the repeats; error = median relative error to the quiet "
                 "machine's paired median.\n")
    est = ("paired", "separate", "sequential")
    lines.append("| variant | | " + " | ".join(est) + " |\n|---|---|" + "---:|" * len(est))
    gains, gains_seq = [], []
    for label in quiet:
        ref = statistics.median(quiet[label]["paired"])
        q, d = quiet[label], drifting[label]
        lines.append(f"| {label} | quiet: median ratio | "
                     + " | ".join(f"x{statistics.median(q[e]):.3f}" for e in est) + " |")
        lines.append("| | quiet: spread | " + " | ".join(f"{100 * rmad(q[e]):.1f}%" for e in est)
                     + " |")
        lines.append("| | drift: spread | " + " | ".join(f"{100 * rmad(d[e]):.1f}%" for e in est)
                     + " |")
        lines.append("| | drift: error | "
                     + " | ".join(f"{100 * error_to(ref, d[e]):.1f}%" for e in est) + " |")
        sp = rmad(d["paired"])
        gains.append(rmad(d["separate"]) / sp if sp else float("inf"))
        gains_seq.append(rmad(d["sequential"]) / sp if sp else float("inf"))
    g, gs = statistics.median(gains), statistics.median(gains_seq)
    goals.append(f"under drift the paired estimate is {g:.1f}x steadier than separate medians of "
                 f"the same samples and {gs:.1f}x steadier than sequential separate measurements "
                 f"(goal >= 2x): {'met' if g >= 2 else 'NOT met'} on the same data, "
                 f"{'met' if gs >= 2 else 'NOT met'} against separate measurements")
    lines.append("\nGoals: " + "; ".join(goals) + ".")
    lines.append(READING)
    text = "\n".join(lines)
    print(text)
    write_section("timing-cost", text)


if __name__ == "__main__":
    main()
