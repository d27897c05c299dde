"""A busy machine (issue 22): what competed with each measurement, the canaries, busy marks,
intervals across epochs, --threads auto, budgets' on_busy, and `convcost doctor`.

The unit tests build the machine's counters by hand; the real-process tests start one busy
process beside convcost (it holds about one core on any machine, so the verdict does not depend
on the machine's size or on other load)."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from convcost.cli import cli
from convcost.figures import KernelTiming, LatencyFigure, MachineState, Measurement
from convcost.timing.machine import _HZ, MIN_WINDOW_S, Snapshot, window
from convcost.timing.stats import bootstrap_median_ci, epoch_bootstrap_ci

SMALL = ["compare", "--in", "16", "--out", "16", "--size", "16", "--batch", "2", "--groups",
         "1,2", "--variants", "grouped", "--max-time", "0.3"]


@contextlib.contextmanager
def busy_process():
    """One other process spinning on a core while the block runs."""
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # it is running before convcost reads the load
        yield
    finally:
        p.kill()
        p.wait()


def _snap(wall: float, own: float, busy_s: float, steal_s: float = 0.0) -> Snapshot:
    return Snapshot(wall, own, 0, round(busy_s * _HZ), round(steal_s * _HZ), 1)


# --------------------------------------------------------------------------- the machine's state


def test_other_tasks_load_makes_a_window_busy():
    start = _snap(0.0, 0.0, 0.0)
    # one second: we used one core-second, the machine two: other tasks held one core
    st = window(start, _snap(1.0, 1.0, 2.0), threads=1)
    assert st.others_cores == pytest.approx(1.0) and st.own_cores == pytest.approx(1.0)
    assert st.busy and st.causes == ("others",) and "other tasks used 1.0 core" in st.why[0]
    quiet = window(start, _snap(1.0, 1.0, 1.1), threads=1)
    assert quiet.others_cores == pytest.approx(0.1) and not quiet.busy
    short = window(start, _snap(MIN_WINDOW_S / 2, 0.1, 0.5), threads=1)
    assert not short.busy  # too short to read a load over (the engine widens such windows)
    stolen = window(start, _snap(1.0, 1.0, 1.0, steal_s=0.5), threads=1)
    assert stolen.busy and stolen.causes == ("steal",) and stolen.steal_cores == pytest.approx(0.5)
    d = st.to_dict()
    assert d["busy"] is True and d["causes"] == ["others"] and d["others_cores"] == 1.0


def test_canaries_and_the_gpu_are_witnesses_too():
    start, end = _snap(0.0, 0.0, 0.0), _snap(1.0, 1.0, 1.0)
    moved = window(start, end, threads=1, canary_drift=0.6, canary_tolerance=0.5)
    assert moved.busy and moved.causes == ("canary",) and "+60%" in moved.why[0]
    assert not window(start, end, threads=1, canary_drift=-0.4, canary_tolerance=0.5).busy
    # a CUDA run: the CPU's load is recorded, the verdict is the GPU's
    loaded = _snap(1.0, 1.0, 2.5)
    assert not window(start, loaded, threads=1, gpu={"other_processes": 0}).busy
    gpu = window(start, end, threads=1, gpu={"other_processes": 2})
    assert gpu.busy and gpu.causes == ("gpu",) and gpu.to_dict()["gpu"]["other_processes"] == 2


def test_canary_drift_against_its_reference():
    from convcost.timing.canary import MIN_TOLERANCE, Canaries

    c = Canaries()
    assert c.drift(0.0) is None and c.tolerances() is None  # no reference yet
    c.reference, c.spread = (2.0, 0.5), (0.01, 0.01)
    assert c.tolerances() == MIN_TOLERANCE
    assert c.drift(0.0) is None  # no reading in the window
    c.readings = [(1.0, 2.2, 0.5), (2.0, 2.2, 0.75), (3.0, 2.2, 0.75)]
    move, tol = c.drift(0.0)  # the matmul moved +50% (tolerance 25%), the copy +10% (50%)
    assert move == pytest.approx(0.5) and tol == MIN_TOLERANCE[1]
    move, _ = c.drift(2.5)  # only the last reading
    assert move == pytest.approx(0.5)
    c.spread = (0.3, 0.01)  # a noisy copy at the start: its tolerance grows with its spread
    assert c.tolerances()[0] == pytest.approx(0.9)


# --------------------------------------------------------------------------- epochs


def test_epoch_interval_is_the_plain_one_on_a_steady_machine():
    rng = random.Random(0)
    steady = [0.7 + rng.gauss(0, 0.02) for _ in range(40)]
    lo, hi = bootstrap_median_ci(steady)
    elo, ehi = epoch_bootstrap_ci(steady)
    assert elo <= lo and ehi >= hi  # never narrower
    assert (ehi - elo) <= 1.5 * (hi - lo)  # and about as precise
    assert epoch_bootstrap_ci(steady) == (elo, ehi)  # deterministic
    assert epoch_bootstrap_ci(steady[:8]) == bootstrap_median_ci(steady[:8])  # one epoch


def test_epoch_interval_widens_when_the_machine_drifts():
    """The ratio moved from 0.6 to 0.8 (a neighbour's traffic that slows one kernel more than
    the other), at once or slowly: the interval covers both states; for a slow drift the plain
    interval sits tight around the middle, the epochs' is wider."""
    rng = random.Random(1)
    step = [0.6 + rng.gauss(0, 0.01) for _ in range(20)] + \
           [0.8 + rng.gauss(0, 0.01) for _ in range(20)]
    elo, ehi = epoch_bootstrap_ci(step)
    assert elo < 0.61 and ehi > 0.79  # both states of the machine are inside
    drift = [0.6 + 0.2 * i / 59 + rng.gauss(0, 0.01) for i in range(60)]
    lo, hi = bootstrap_median_ci(drift)
    elo, ehi = epoch_bootstrap_ci(drift)
    assert (ehi - elo) > 1.5 * (hi - lo) and elo < 0.7 < ehi


# --------------------------------------------------------------------------- rendering


def _busy_state() -> MachineState:
    return MachineState(1.0, 2, 1, 1.0, 1.0, 0.0, 3, 1, why=("other tasks used 1.0 core(s)",),
                        causes=("others",))


def test_busy_figures_are_marked_and_withheld_from_headlines():
    from convcost.report.common import busy_lines, iqr_cell
    from convcost.report.compare import _headline
    from convcost.variants.compare import CompareRow

    t = KernelTiming(Measurement(median_ms=1.0, iqr_ms=0.02, converged=False), "measured",
                     machine=_busy_state())
    assert iqr_cell(t) == "2.0%! busy" and t.to_dict()["machine"]["busy"] is True
    fig = LatencyFigure(1.0, 0.6, (0.58, 0.62), 12, "measured", timing=t, busy=True,
                        withheld=True)
    row = CompareRow("layer", "grouped", 4, macs=10, ratio_macs=0.25, backends={"eager": fig})
    assert _headline(row) == "MACs x0.250, latency withheld (busy)"
    row.backends["eager"] = LatencyFigure(1.0, 0.6, (0.58, 0.62), 12, "measured", timing=t,
                                          busy=True, withheld=False)  # --on-busy accept
    assert _headline(row) == "MACs x0.250, latency x0.600"
    summary = {"busy": ["layer original", "layer g=2"], "engine": {"measured": 3},
               "machine": {"busy_by": {"others": 1}, "others_cores_busy_mean": 1.0, "cpus": 2}}
    (line,) = busy_lines(summary)
    assert "other tasks used about 1.0 of 2 cores during 2 of 3 measurement(s)" in line.plain
    assert "not quoted in headlines" in line.plain
    assert busy_lines({"busy": []}) == []


# --------------------------------------------------------------------------- real processes


def test_compare_beside_a_busy_process(monkeypatch):
    from convcost.timing.table import LatencyTable

    monkeypatch.delenv("CONVCOST_ON_BUSY", raising=False)
    with busy_process():
        r = CliRunner().invoke(cli, [*SMALL, "-f", "json"])
        t = CliRunner().invoke(cli, [*SMALL, "--wide"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    rows = [d["baseline"], *d["variants"]]
    assert all(v["latency_busy"] for v in rows) and all(v["latency_withheld"] for v in rows)
    assert all(v["timing"]["machine"]["others_cores"] >= 0.3 for v in rows)
    mach = d["timing"]["machine"]
    assert mach["busy_by"].get("others") and mach["on_busy"] == "withhold"
    assert d["timing"]["busy"] and "other tasks" in mach["threads_auto"]
    assert d["device"]["threads"] < torch.get_num_threads() or torch.get_num_threads() == 1
    assert LatencyTable.open().count()[0] == 0  # nothing a busy machine measured is kept
    assert t.exit_code == 0, t.output
    assert "latency withheld (busy)" in t.stdout and "busy: other tasks used about" in t.stdout
    assert "threads: " in t.stdout or torch.get_num_threads() == 1


def test_accepted_busy_figures_are_quoted_and_stored(monkeypatch):
    from convcost.timing.table import LatencyTable

    monkeypatch.setenv("CONVCOST_ON_BUSY", "accept")
    with busy_process():
        r = CliRunner().invoke(cli, [*SMALL, "-f", "json", "--threads", "1"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["variants"][0]["latency_busy"] and not d["variants"][0]["latency_withheld"]
    assert d["device"]["threads"] == 1 and d["timing"]["machine"]["threads_auto"] is None
    assert d["timing"]["machine"]["on_busy"] == "accept"
    assert LatencyTable.open().count()[0] > 0


def _budget(tmp_path, policy: str | None):
    from tests.conftest import EXAMPLES

    b = tmp_path / "b.yaml"
    b.write_text("version: 1\n" + (f"on_busy: {policy}\n" if policy else "")
                 + f"checks:\n  - name: tiny\n    model: {EXAMPLES / 'tiny.yaml'}\n"
                 "    limits:\n      latency: {error: '1000 s', device: cpu}\n")
    return b


def test_budget_latency_on_a_busy_machine(tmp_path, monkeypatch):
    monkeypatch.delenv("CONVCOST_ON_BUSY", raising=False)
    with busy_process():
        default = CliRunner().invoke(cli, ["check", str(_budget(tmp_path, None)),
                                           "--max-time", "0.2", "-f", "json"])
        at_once = CliRunner().invoke(cli, ["check", str(_budget(tmp_path, "unmeasured")),
                                           "--max-time", "0.2"])
        accept = CliRunner().invoke(cli, ["check", str(_budget(tmp_path, "accept")),
                                          "--max-time", "0.2"])
    assert default.exit_code == 4, default.output
    (v,) = json.loads(default.stdout)["results"]
    assert v["verdict"] == "error" and "the machine was busy" in v["message"]
    assert "measured twice; on_busy: remeasure" in v["message"]
    assert at_once.exit_code == 4 and "on_busy: unmeasured" in at_once.output
    assert "measured twice" not in at_once.output
    assert accept.exit_code == 0, accept.output
    assert "judged although the machine was busy" in accept.output and "PASS" in accept.output


def test_bad_on_busy_and_threads_are_one_line(tmp_path):
    from tests.test_hardening3 import one_error

    one_error(CliRunner().invoke(cli, ["check", str(_budget(tmp_path, "maybe"))]), 2, "on_busy")
    for bad in ("0", "x", "auto2", "2000"):
        r = CliRunner().invoke(cli, ["compare", "--threads", bad, "--no-time"])
        assert r.exit_code == 2 and "thread count" in r.output and "Traceback" not in r.output


def test_doctor(monkeypatch):
    r = CliRunner().invoke(cli, ["doctor", "--sample", "0.2"])
    assert r.exit_code == 0, r.output
    for name in ("load:", "frequency governor:", "threads:", "GPU"):
        assert name in r.stdout
    assert "warning(s)" in r.stdout.splitlines()[-1]
    with busy_process():
        j = CliRunner().invoke(cli, ["doctor", "--sample", "0.3", "-f", "json"])
    d = json.loads(j.stdout)
    assert all(f["status"] in ("ok", "warn", "info") for f in d["findings"])
    load = next(f for f in d["findings"] if f["name"] == "load")
    assert load["status"] == "warn" and load["advice"] and d["warnings"] >= 1
