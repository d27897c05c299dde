"""The timing engine: unique kernels measured once, the persistent latency table, paired ratios
with intervals, the whole-run time budget and progress lines. No timing thresholds: where time
matters, sleeps give lower bounds only."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from convcost.cli import cli
from convcost.report.progress import PlainProgress
from convcost.timing.engine import SAME, TimingEngine, water_fill
from convcost.timing.harness import Bench, TimingConfig, measure_group
from convcost.timing.kernel import Kernel, kernel_key, module_signature
from convcost.timing.stats import (
    PairedRatio,
    bootstrap_median_ci,
    paired_ratio,
    ratio_of_medians,
    round_ratios,
)
from convcost.timing.table import APPLICATION_ID, LatencyTable
from tests.conftest import ROOT

FAST = ["--max-time", "0.05"]
CFG = TimingConfig(max_time_s=0.03, min_samples=3)


class CountingConv(nn.Conv2d):
    """A conv that counts its own calls (per instance)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


class SleepyConv(nn.Conv2d):
    """At least 30 ms per call: a lower bound on how long its warm-up takes."""

    def forward(self, x):
        time.sleep(0.03)
        return super().forward(x)


# --------------------------------------------------------------------------- identity


def test_signature_is_the_kernel_not_the_instance():
    a, b = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
    assert module_signature(a) == module_signature(b)  # weights never matter
    assert module_signature(a) != module_signature(nn.Conv2d(8, 16, 3, padding=1, groups=2))
    assert module_signature(a) != module_signature(nn.Conv2d(8, 16, 3, padding=1, bias=False))
    assert module_signature(a) != module_signature(CountingConv(8, 16, 3, padding=1))
    seq = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 1))
    assert "Sequential" in module_signature(seq) and "groups=8" in module_signature(seq)


def test_key_covers_shapes_numerics_and_device():
    from convcost.timing.device import Numerics, fingerprint

    sig = module_signature(nn.Conv2d(8, 8, 3))
    n = Numerics("cpu", "fp32", False, 2)
    fp = fingerprint(n)
    k = kernel_key(sig, [(1, 8, 16, 16)], n, fp)
    assert k == kernel_key(sig, [(1, 8, 16, 16)], n, dict(fp))
    assert k != kernel_key(sig, [(2, 8, 16, 16)], n, fp)
    assert k != kernel_key(sig, [(1, 8, 16, 16)], Numerics("cpu", "bf16", False, 2), fp)
    assert k != kernel_key(sig, [(1, 8, 16, 16)], n, {**fp, "threads": 1})
    assert k != kernel_key(sig, [(1, 8, 16, 16)], n, {**fp, "torch": "9.9"})
    assert k != kernel_key(sig, [(1, 8, 16, 16)], n, fp, backend="inductor")
    assert k != kernel_key(sig, [(1, 8, 16, 16)], n, fp, cold=True)


# --------------------------------------------------------------------------- dedup


def test_identical_layers_are_measured_once_and_share_the_figure():
    first, second = CountingConv(4, 4, 3, padding=1), CountingConv(4, 4, 3, padding=1)
    eng = TimingEngine(CFG, budget_s=None)
    k1 = eng.add_group([Kernel(first, [(1, 4, 8, 8)], (1, 4, 8, 8))], paired=False)
    k2 = eng.add_group([Kernel(second, [(1, 4, 8, 8)], (1, 4, 8, 8))], paired=False)
    assert k1 == k2 and len(eng.groups) == 1
    eng.run()
    assert first.calls > 0 and second.calls == 0  # one measurement ...
    assert eng.kernel(k1[0]).median_ms is not None  # ... that both rows read
    assert eng.counts() == {"measured": 1}


def test_variant_equal_to_original_is_not_measured():
    base = CountingConv(4, 4, 3, padding=1, groups=2)
    same = CountingConv(4, 4, 3, padding=1, groups=2)
    other = CountingConv(4, 4, 3, padding=1, groups=4)
    eng = TimingEngine(CFG, budget_s=None)
    keys = eng.add_group([Kernel(m, [(1, 4, 8, 8)]) for m in (base, same, other)], paired=True)
    eng.run()
    assert keys[0] == keys[1] and same.calls == 0 and other.calls > 0
    assert eng.pair(keys[0], keys[1]).status == SAME
    assert eng.pair(keys[0], keys[2]).ratio is not None


def test_compare_marks_the_identical_variant_and_dedups_layers(tmp_path):
    spec = tmp_path / "twins.yaml"
    spec.write_text("batch: 1\nlayers:\n"
                    "  - {name: a, input: [8, 12, 12], conv: {out: 8, kernel: 3, groups: 4}}\n"
                    "  - {name: b, input: [8, 12, 12], conv: {out: 8, kernel: 3, groups: 4}}\n")
    r = CliRunner().invoke(cli, ["compare", str(spec), "--groups", "2,4", "--variants", "grouped",
                                 "--no-model", "-f", "json", *FAST])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    la, lb = d["layers"]
    assert la["baseline"]["latency_ms"] == lb["baseline"]["latency_ms"] is not None
    g4 = next(v for v in la["variants"] if v["groups"] == 4)
    assert "already is this conv" in g4["skipped"] and g4["latency_ms"] is None  # not an alternative
    # original g=4 and grouped g=2 only; dense g=1 is not asked for
    assert d["timing"]["engine"]["unique_kernels"] == 2


# --------------------------------------------------------------------------- the table


def _compare(args=(), cap="0.05"):
    return CliRunner().invoke(cli, ["compare", "--in", "8", "--out", "8", "--size", "8",
                                    "--batch", "1", "--groups", "2", "-f", "json",
                                    "--max-time", cap, *args])


def test_cache_round_trip_and_fresh(isolated_cache):
    # a cap far above what 5 rounds take (a round of this 8x8 conv is milliseconds, a few tenths
    # of a second on a loaded machine): every pair reaches the 5 rounds a stored ratio needs
    r1 = _compare(cap="10")
    assert r1.exit_code == 0, r1.output
    d1 = json.loads(r1.stdout)
    assert d1["timing"]["engine"]["measured"] == 4 and d1["timing"]["engine"]["cached"] == 0
    assert d1["timing"]["engine"]["pairs_measured"] == 3
    assert all(v["timing"]["pair"]["rounds"] >= 5 for v in d1["variants"])
    assert (isolated_cache / "latency.sqlite").is_file()
    r2 = _compare(cap="1")
    d2 = json.loads(r2.stdout)
    e2 = d2["timing"]["engine"]
    assert (e2["measured"], e2["cached"], e2["pairs_measured"], e2["pairs_cached"]) == (0, 4, 0, 3)
    for a, b in zip(d1["variants"], d2["variants"], strict=True):
        assert a["latency_ms"] == b["latency_ms"] and a["ratio"] == b["ratio"]
        assert b["latency_source"] == "cached" and b["cached_at"]
        assert a["latency_ratio_ci"] == b["latency_ratio_ci"]
    t = CliRunner().invoke(cli, ["compare", "--in", "8", "--out", "8", "--size", "8", "--batch",
                                 "1", "--groups", "2", *FAST])
    assert f"cached {d2['variants'][0]['cached_at'][:10]}" in t.stdout
    r3 = _compare(["--fresh"], cap="0.05")
    assert json.loads(r3.stdout)["timing"]["engine"]["measured"] == 4


def test_corrupt_or_foreign_table_is_set_aside(isolated_cache):
    db = isolated_cache / "latency.sqlite"
    db.write_bytes(b"this is not a database" * 50)
    r = _compare()
    assert r.exit_code == 0 and "Traceback" not in r.output
    assert "was not a usable SQLite database" in r.stdout  # notice in the report
    assert list(isolated_cache.glob("latency.sqlite.bad-*"))
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    con.close()
    for p in isolated_cache.glob("latency.sqlite*"):
        p.unlink()
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE kernels (x)")
    con.commit()
    con.close()
    r = _compare()
    assert r.exit_code == 0 and "another schema" in json.loads(r.stdout)["timing"]["notices"][0]


def test_unusable_cache_location_is_a_notice(isolated_cache, monkeypatch):
    blocker = isolated_cache / "file"
    blocker.write_text("x")
    monkeypatch.setenv("CONVCOST_CACHE_DIR", str(blocker / "sub"))  # parent is a file
    r = _compare()
    assert r.exit_code == 0, r.output
    notices = json.loads(r.stdout)["timing"]["notices"]
    assert notices and "cannot be used" in notices[0]
    assert json.loads(r.stdout)["variants"][0]["latency_ms"] > 0


WRITER = """
import sys
from pathlib import Path
from convcost.timing.table import LatencyTable
t = LatencyTable.open(Path(sys.argv[1]))
assert not t.notices, t.notices
for i in range(150):
    m = 1.0 + i
    t.put_kernel({"key": f"{sys.argv[2]}-{i}", "label": "x", "scope": "layer", "signature": "s",
                  "dtype": "fp32", "memory_format": "contiguous", "backend": "eager",
                  "device": "cpu", "torch": "2", "threads": 2, "median_ms": m, "q1_ms": m,
                  "q3_ms": m, "min_ms": m, "max_ms": m, "n": 10, "calls_per_sample": 1,
                  "in_shapes": [[1, 2]], "measured_at": "2026-11-23T00:00:00+00:00"})
    t.put_pair(f"{sys.argv[2]}-{i}", "v", 0.5, 0.4, 0.6, 10, "2026")
assert not t.notices, t.notices
print(t.count())
"""


def test_two_concurrent_writers(tmp_path):
    """Two processes create and fill one table at the same time: every row lands, no notice."""
    db = tmp_path / "shared" / "latency.sqlite"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), tag], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    t = LatencyTable.open(db)
    assert t.count() == (300, 300) and not t.notices
    assert {r["key"] for r in t.kernels()} == {f"{x}-{i}" for x in "ab" for i in range(150)}


def test_cache_commands(isolated_cache, tmp_path):
    """list / export / clear on a table filled with four stored rows (written directly: the
    commands are under test, not the machine's speed)."""
    from tests.conftest import stored_row

    t = LatencyTable.open()
    for i in range(4):
        t.put_kernel(stored_row(f"k{i}", median=1.0 + i))
    t.close()
    r = CliRunner().invoke(cli, ["cache", "list"])
    assert r.exit_code == 0 and "Conv2d(8, 8" in r.stdout and "4 measurement(s)" in r.stdout
    out = tmp_path / "table.csv"
    r = CliRunner().invoke(cli, ["cache", "export", str(out)])
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert lines[0].startswith("label,") and len(lines) == 5
    js = tmp_path / "table.json"
    CliRunner().invoke(cli, ["cache", "export", str(js)])
    doc = json.loads(js.read_text())
    assert len(doc["measurements"]) == 4 and doc["measurements"][0]["median_ms"] > 0
    assert {"in_shapes", "dtype", "device_name", "threads", "torch"} <= set(doc["measurements"][0])
    r = CliRunner().invoke(cli, ["cache", "clear"])
    assert r.exit_code == 0 and "removed 4 measurement(s)" in r.stdout
    assert "0 measurement(s)" in CliRunner().invoke(cli, ["cache", "list"]).stdout
    assert CliRunner().invoke(cli, ["cache", "path"]).stdout.strip().endswith("latency.sqlite")


def test_a_real_compare_fills_the_table(isolated_cache):
    """What a timed compare stores is what `cache list` shows (however many were stored: a
    busy machine may leave a kernel under the sample minimum, which is then not kept)."""
    r = _compare(["--time-budget", "600"])
    assert r.exit_code in (0, 4), r.output
    stored = LatencyTable.open().count()[0]
    listed = CliRunner().invoke(cli, ["cache", "list", "-f", "json"])
    assert len(json.loads(listed.stdout)["measurements"]) == stored


# --------------------------------------------------------------------------- budget


def test_budget_exhaustion_marks_rows_and_exits_4(tmp_path):
    """Two groups of sleepy convs; the first group (the whole model: 4 calls x 60 ms to warm up) outlasts a
    0.1 s budget, so the layer groups cannot start."""
    net = tmp_path / "sleepy.py"
    net.write_text("from torch import nn\nfrom tests.test_engine import SleepyConv\n"
                   "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                   "        self.a = SleepyConv(3, 4, 3, padding=1)\n"
                   "        self.b = SleepyConv(4, 8, 1)\n"
                   "    def forward(self, x):\n        return self.b(self.a(x))\n")
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["analyze", f"{net}:Net", "--input-shape", "1,3,8,8",
                                 "--time-budget", "0.1", "-f", "json", "-o", str(out)])
    assert r.exit_code == 4, r.output
    assert "did not fit in the time budget" in r.stderr
    d = json.loads(out.read_text())
    assert d["timing"]["not_measured_budget"]
    rows = {x["name"]: x for x in d["layers"]}
    assert any(rows[n]["timing"]["source"] == "budget" for n in ("a", "b"))
    assert d["timing"]["engine"]["budget_exhausted"] is True


def test_water_fill():
    items = [(1.0, 0.1, 1.0), (4.0, 0.2, 1.0)]
    assert water_fill(10.0, items) == float("inf")  # the caps fit: no pressure
    lam = water_fill(1.0, items)
    used = sum(min(c, max(f, lam * w)) for w, f, c in items)
    assert used == pytest.approx(1.0, rel=1e-6)
    lam = water_fill(0.01, items)  # below the floors: floors win
    assert sum(min(c, max(f, lam * w)) for w, f, c in items) == pytest.approx(0.3)


# --------------------------------------------------------------------------- statistics


def test_paired_ratio_cancels_drift():
    """A machine that slows down 3x over the run: separate medians are skewed when the two
    callables were sampled at different moments, the per-round ratio is exact."""
    drift = [1.0 + 2.0 * i / 59 for i in range(60)]
    base = [10.0 * d for d in drift]
    var = [5.0 * d for d in drift]
    pr = paired_ratio(base, var)
    assert pr.ratio == pytest.approx(0.5) and pr.lo == pytest.approx(0.5)
    assert pr.hi == pytest.approx(0.5) and pr.rounds == 60 and pr.supports_headline
    # the variant sampled during the slow half only (what separate runs would see)
    late = [None] * 30 + var[30:]
    assert ratio_of_medians(base, late) > 0.6  # the unpaired estimate is off by > 20% ...
    assert paired_ratio(base, late).ratio == pytest.approx(0.5)  # ... the paired one is not


def test_interval_and_headline_rule():
    r = [0.2, 1.4, 0.5, 0.9, 0.3, 1.2, 0.8, 0.4, 1.1, 0.6]
    lo, hi = bootstrap_median_ci(r)
    assert lo <= sorted(r)[5] <= hi and (lo, hi) == bootstrap_median_ci(r)  # deterministic
    wide = paired_ratio([1.0] * 10, r)
    assert not wide.supports_headline and wide.rel_width >= 0.5
    narrow = paired_ratio([1.0] * 10, [0.70, 0.71, 0.69, 0.70, 0.72, 0.70, 0.68, 0.71, 0.70, 0.69])
    assert narrow.supports_headline and narrow.lo <= 0.70 <= narrow.hi
    assert not PairedRatio(1.0, 0.9, 1.1, 2).supports_headline  # too few rounds
    assert round_ratios([1.0, None, 2.0], [0.5, 1.0, None]) == [0.5]


def test_noisy_headline_in_the_table():
    from dataclasses import replace

    from convcost.figures import LatencyFigure
    from convcost.report.compare import _headline, _ratio_cell
    from convcost.variants.compare import CompareRow

    fig = LatencyFigure(ratio_latency=0.6, latency_ci=(0.2, 1.4), latency_rounds=12,
                        latency_source="measured")
    row = CompareRow("layer", "grouped", 4, params=1, macs=10, ratio_macs=0.25,
                     backends={"eager": fig})
    assert _headline(row) == "MACs x0.250, noisy: x0.200-x1.40"
    row.backends["eager"] = fig = replace(fig, latency_ci=(0.58, 0.62))
    assert _headline(row) == "MACs x0.250, latency x0.600"
    assert _ratio_cell(row.figure) == "x0.600 [0.58, 0.62]"
    row.backends["eager"] = replace(fig, latency_source=SAME)
    assert _headline(row) == "MACs x0.250, = original"


def test_group_rounds_pair_the_baseline_with_each_variant():
    calls: list[str] = []
    one = torch.ones(1)

    def f(tag):
        def call():
            calls.append(tag)
            return one
        return call

    cfg = TimingConfig(max_time_s=0.02, min_samples=1000)
    res = measure_group([Bench(f("b"), cfg), Bench(f("v1"), cfg), Bench(f("v2"), cfg)], paired=True)
    base, v1, v2 = res.rounds
    assert len(base) == len(v1) == len(v2)  # aligned rounds
    assert all(b is not None for b in base if b is not None)
    # the baseline is sampled in every round in which a variant is
    assert all(b is not None for b, x in zip(base, v1, strict=True) if x is not None)
    assert len(round_ratios(base, v1)) >= 3


# --------------------------------------------------------------------------- progress


def test_plain_progress_lines_go_to_stderr_not_stdout(tmp_path):
    p = subprocess.run([sys.executable, "-m", "convcost", "compare", "--in", "8", "--out", "8",
                        "--size", "8", "--batch", "1", "--groups", "2", "-f", "json", *FAST],
                       capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                            "CONVCOST_CACHE_DIR": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    json.loads(p.stdout)  # stdout is the report alone
    assert "timing: 4 kernels to measure (time budget 40 s)" in p.stderr
    assert "\x1b[" not in p.stderr  # no terminal control codes in a log


def test_plain_progress_format():
    import io

    buf = io.StringIO()
    prog = PlainProgress("timing", stream=buf, interval=0.0)
    prog.start(3, budget_s=10.0)
    prog.advance("a")
    prog.advance("b")
    prog.advance("c")
    lines = buf.getvalue().splitlines()
    assert lines[0] == "timing: 3 kernels to measure (time budget 10 s)"
    assert lines[1].startswith("timing 1/3 kernels, ") and lines[1].endswith(" s left")
    assert len(lines) == 3  # nothing printed at 3/3: the report follows


def test_table_module_never_raises_on_a_directory(tmp_path):
    (tmp_path / "latency.sqlite").mkdir()
    t = LatencyTable.open(tmp_path / "latency.sqlite")
    assert t.con is None and "cannot be used" in t.notices[0]
    assert t.get_kernel("x") is None
    t.put_kernel({"key": "x"})  # disabled: stores nothing, raises nothing


class _Sleep(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.06)
        return x


def test_stored_only_with_enough_samples(isolated_cache):
    """50 samples of a 60 ms call need 3 s; the run's 2 s budget stops it first (a sleeping
    call takes as long on a busy machine, and the second of margin covers the machine watch
    and warm-up under load): the figure is reported, not kept in the latency table."""
    eng = TimingEngine(TimingConfig(max_time_s=10, min_samples=50),
                       table=LatencyTable.open(Path(isolated_cache) / "t.sqlite"), budget_s=2.0)
    eng.add_group([Kernel(_Sleep(), [(1, 2, 4, 4)])], paired=False)
    eng.run()
    assert eng.counts() == {"measured": 1}
    assert eng.kernel(next(iter(eng.results))).measurement.n < 50
    assert eng.table.count() == (0, 0)


def test_stop_rule_iqr_or_a_precise_median():
    from convcost.timing.harness import median_rse, stable

    cfg = TimingConfig(min_samples=10, min_rounds=5, rel_iqr=0.03, median_rse=0.01)
    tight = [1.0, 1.01, 0.99, 1.0, 1.005, 0.995, 1.0, 1.0, 1.01, 0.99]
    assert stable(tight, cfg, min_n=10) == "iqr"
    noisy = [1.0 + 0.1 * ((i * 7) % 11 - 5) / 5 for i in range(400)]  # ~10% IQR, many rounds
    assert stable(noisy, cfg, min_n=5) == "median" and median_rse(noisy) <= 0.01
    assert stable(noisy[:20], cfg, min_n=5) is None  # same spread, too few rounds to pin it
    assert stable(noisy[:4], cfg, min_n=5) is None


def test_bench_reports_why_it_stopped():
    b = Bench(lambda: torch.ones(1), TimingConfig(min_samples=5, min_rounds=5))
    b.samples = [1.0, 1.2, 0.8, 1.1, 0.9] * 20
    b.round_values = [1.0, 1.01, 0.99, 1.0, 1.0, 1.02, 0.98]
    m = b.result()
    assert m.converged and m.stop == "median" and m.rounds == 7 and m.median_rse < 0.01
    b.round_values = b.round_values[:3]
    m = b.result()  # rounds too few to pin the median, but the running median has settled
    assert m.converged and m.stop == "settled"
    b.samples = [1.0 + 0.01 * i for i in range(100)]  # drifting: wide and not settled
    b.spent = b.cap_s
    m = b.result()
    assert not m.converged and m.stop == "cap" and b.done


def test_settled_needs_enough_samples_and_a_still_median():
    from convcost.timing.harness import settled

    wide = [1.0, 1.3, 0.7, 1.2, 0.8] * 8  # IQR/median ~40%, median 1.0 throughout
    assert settled(wide, 0.01, min_n=20)
    assert not settled(wide[:15], 0.01, min_n=20)
    assert not settled([1.0] * 20 + [1.5] * 20, 0.01, min_n=20)  # the median moved


def test_cap_never_below_the_minimum_sample_count():
    import time as _t

    b = Bench(lambda: (_t.sleep(0.03), torch.ones(1))[1],
              TimingConfig(max_time_s=0.1, min_samples=10))
    b.prepare()
    assert b.cap_s >= 10 * 0.03  # 10 samples of a 30 ms call fit under the cap
