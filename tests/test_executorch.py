"""--backend executorch: torch.export -> XNNPACK delegate -> ExecuTorch's runtime, on real layers
(export, lowering and the runtime are the real ones; nothing is mocked)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import pytest
from click.testing import CliRunner
from torch import nn

from convcost.cli import cli
from convcost.figures import Lowering
from convcost.timing import backends
from convcost.timing import table as table_module
from convcost.timing.device import Numerics
from convcost.timing.engine import FAILED, MEASURED, UNSUPPORTED, TimingEngine
from convcost.timing.harness import TimingConfig
from convcost.timing.kernel import Kernel
from convcost.timing.table import ADDED_V3, APPLICATION_ID, LatencyTable, stored_lowering
from tests.conftest import EXAMPLES, ROOT, stored_row
from tests.fixtures.backend_models import Unexportable
from tests.fixtures.executorch_models import ConvCumsum
from tests.helpers import latency_budget

pytest.importorskip("executorch", reason="convcost[executorch] is part of .[test]")

SMALL = ["--in", "8", "--out", "8", "--size", "8", "--batch", "2", "--max-time", "0.05",
         "--time-budget", "600"]  # a budget no loaded machine runs out of (setup counts in it)
CUMSUM_MODEL = f"{ROOT / 'tests' / 'fixtures' / 'executorch_models.py'}:ConvCumsum"


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def _analyze_cumsum(*args: str):
    """``analyze`` of the conv + cumsum model timed on executorch alone, one thread."""
    return invoke("analyze", CUMSUM_MODEL, "--input-shape", "1,4,6,6", "--max-time", "0.05",
                  "--time-budget", "600", "--backend", "executorch", "--threads", "1", *args)


def _cfg(threads: int | None = None, dtype: str = "fp32", pass_name: str = "inference"
         ) -> TimingConfig:
    return TimingConfig(max_time_s=0.05, min_samples=3, min_rounds=2, pass_name=pass_name,
                        numerics=Numerics(threads=threads, dtype=dtype))


def test_engine_lowers_checks_and_records_what_xnnpack_took():
    e = TimingEngine(_cfg(threads=1), backend="executorch", budget_s=None)
    mods = [nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
            nn.Conv2d(8, 8, 3, padding=1, groups=2)]
    keys = e.add_group([Kernel(m, [(2, 8, 8, 8)], (2, 8, 8, 8)) for m in mods], paired=True)
    e.run()
    for k in keys:
        r = e.kernel(k)
        assert r.status == MEASURED and r.median_ms > 0
        assert r.setup_s is not None and r.setup_s > 0  # export + lowering + load, apart
        assert r.check["against"] == "eager" and r.check["max_rel_err"] <= r.check["tolerance"]
        assert r.lowering == Lowering("XNNPACK", 1, 0, ())  # the conv, inside the delegate
    assert e.pair(keys[0], keys[1]).ratio is not None
    info = e.backend_info
    assert info["version"] and info["provider"] == "XNNPACK delegate" and info["threads"] == 1


def test_an_operator_xnnpack_lacks_is_counted_on_the_portable_kernels():
    e = TimingEngine(_cfg(threads=1), backend="executorch", budget_s=None)
    (key,) = e.add_group([Kernel(ConvCumsum(), [(1, 4, 6, 6)], (1, 4, 6, 6))], paired=False)
    e.run()
    r = e.kernel(key)
    assert r.status == MEASURED  # measured all the same: a phone would run it so, slowly
    lo = r.lowering
    assert (lo.delegated_nodes, lo.portable_nodes) == (1, 1) and not lo.complete
    assert lo.portable_ops == ("aten.cumsum.default",)
    assert lo.share == 0.5 and lo.text() == "XNNPACK 1/2 nodes (portable: aten.cumsum.default)"


def test_the_runtime_pool_takes_the_timing_threads_and_the_id_names_them():
    from executorch.extension.pybindings import portable_lib

    ids = []
    for threads in (1, 2):
        e = TimingEngine(_cfg(threads=threads), backend="executorch", budget_s=None)
        (key,) = e.add_group([Kernel(nn.Conv2d(4, 4, 1), [(1, 4, 4, 4)], (1, 4, 4, 4))],
                             paired=False)
        e.run()
        assert e.kernel(key).status == MEASURED
        assert portable_lib._threadpool_get_thread_count() == threads
        ids.append(backends.EXECUTORCH.key_id(Numerics(threads=threads)))
    version = backends.EXECUTORCH.info(Numerics())["version"]
    assert ids == [f"executorch {version} XNNPACK delegate 1 threads",
                   f"executorch {version} XNNPACK delegate 2 threads"]


def test_table_stores_backend_id_and_lowering_and_a_cached_figure_keeps_them(tmp_path):
    table = LatencyTable.open(tmp_path / "t.sqlite")
    k = Kernel(ConvCumsum(), [(1, 4, 6, 6)], (1, 4, 6, 6))
    first = TimingEngine(_cfg(threads=1), table=table, backend="executorch", budget_s=None,
                         store_busy=True)
    (key,) = first.add_group([k], paired=False)
    first.run()
    row = table.get_kernel(key)
    assert row["backend"] == "executorch"
    assert row["backend_id"].startswith("executorch ") and row["backend_id"].endswith(
        "XNNPACK delegate 1 threads")
    assert (row["delegate"], row["delegated_nodes"], row["portable_nodes"],
            row["portable_ops"]) == ("XNNPACK", 1, 1, "aten.cumsum.default")
    again = TimingEngine(_cfg(threads=1), table=table, backend="executorch", budget_s=None)
    (key2,) = again.add_group([k], paired=False)
    again.run()
    assert again.kernel(key2).status == "cached"
    assert again.kernel(key2).lowering == first.kernel(key).lowering


def test_table_rejects_a_bad_node_count_and_migrates_schema_2(tmp_path):
    path = tmp_path / "t.sqlite"
    con = sqlite3.connect(path)  # a version-2 table: the current one less version 3's columns
    con.executescript(table_module._SCHEMA.replace(
        ", " + ", ".join(f"{n} {t}" for n, t in ADDED_V3), "").replace(
        f"user_version = {table_module.SCHEMA_VERSION}", "user_version = 2"))
    assert "backend_id" not in [r[1] for r in con.execute("PRAGMA table_info(kernels)")]
    con.close()
    t = LatencyTable.open(path)
    assert not t.notices, t.notices  # migrated in place
    t.put_kernel(stored_row("a" * 32, backend="executorch", delegate="XNNPACK",
                            delegated_nodes=3, portable_nodes=0, portable_ops=""))
    assert stored_lowering(t.get_kernel("a" * 32)) == Lowering("XNNPACK", 3, 0, ())
    t.put_kernel(stored_row("b" * 32, delegate="XNNPACK", delegated_nodes=-1, portable_nodes=0))
    assert t.get_kernel("b" * 32) is None and any("node count" in n for n in t.notices)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 3
    assert sqlite3.connect(path).execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def test_export_failure_marks_the_kernel_and_the_rest_goes_on():
    e = TimingEngine(_cfg(threads=1), backend="executorch", budget_s=None)
    conv = Kernel(nn.Conv2d(3, 3, 3, padding=1), [(1, 3, 8, 8)], (1, 3, 8, 8))
    bad = Kernel(Unexportable(), [(1, 3, 8, 8)])
    keys = [e.add_group([k], paired=False)[0] for k in (conv, bad)]
    e.run()
    ok, failed = (e.kernel(k) for k in keys)
    assert ok.status == MEASURED
    assert failed.status == FAILED
    assert failed.error.startswith(("executorch export failed", "executorch lowering failed"))


def test_training_pass_is_refused_per_row_not_failed():
    e = TimingEngine(_cfg(threads=1, pass_name="training"), backend="executorch", budget_s=None)
    (key,) = e.add_group([Kernel(nn.Conv2d(4, 4, 1), [(1, 4, 4, 4)], (1, 4, 4, 4))],
                         paired=False)
    e.run()
    assert e.kernel(key).status == UNSUPPORTED


def test_fp16_runs_and_its_output_is_checked():
    e = TimingEngine(_cfg(threads=1, dtype="fp16"), backend="executorch", budget_s=None)
    (key,) = e.add_group([Kernel(nn.Conv2d(8, 8, 3, padding=1), [(1, 8, 8, 8)], (1, 8, 8, 8))],
                         paired=False)
    e.run()
    r = e.kernel(key)
    assert r.status == MEASURED, r.error
    assert r.check["max_rel_err"] <= r.check["tolerance"] == backends.tolerance("fp16")
    assert r.lowering is not None  # delegated or not, it says which


# ------------------------------------------------------------------ through the CLI


def test_compare_eager_and_executorch_side_by_side_json():
    r = invoke("compare", *SMALL, "--groups", "1,2", "--variants", "grouped,depthwise,separable",
               "--backend", "eager,executorch", "--threads", "1", "-f", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    for row in (d["baseline"], *d["variants"]):
        fig = row["backends"]["executorch"]
        if fig["latency_source"] == "same":
            continue
        assert fig["latency_ms"] > 0
        low = fig["timing"]["lowering"]
        assert low["delegate"] == "XNNPACK" and low["portable_nodes"] == 0
        assert low["delegated_nodes"] == (2 if row["variant"] == "separable" else 1)
    fp = d["timing"]["backends"]["executorch"]["fingerprint"]
    assert fp["provider"] == "XNNPACK delegate" and fp["threads"] == 1
    assert fp["lowering"]["portable_nodes"] == 0
    assert fp["lowering"]["kernels"] == fp["lowering"]["fully_delegated"] >= 4


def test_analyze_names_the_kernels_xnnpack_did_not_take_whole():
    r = _analyze_cumsum()
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "executorch: not every node on its delegate: whole model XNNPACK 1/2 nodes " \
           "(portable: aten.cumsum.default)" in out
    assert "XNNPACK took 2/3 operator nodes; 1/2 kernels fully" in out
    j = _analyze_cumsum("-f", "json")
    d = json.loads(j.stdout)
    conv = next(x for x in d["layers"] if x["name"] == "conv")
    assert conv["timing"]["lowering"]["delegated_share"] == 1.0


def test_cache_list_shows_the_backend_id():
    r = invoke("compare", *SMALL, "--groups", "1", "--variants", "depthwise",
               "--backend", "executorch", "--threads", "1")
    assert r.exit_code == 0, r.output
    out = invoke("cache", "list", "--wide").stdout
    assert "XNNPACK delegate 1 threads" in out


def test_missing_extra_and_cuda_are_one_line_exit_2(monkeypatch):
    r = invoke("compare", *SMALL, "--backend", "executorch", "--device", "cuda")
    assert r.exit_code == 2 and "Traceback" not in r.output
    monkeypatch.setattr(backends.EXECUTORCH, "needs", ("convcost_no_such_runtime",))
    r = invoke("analyze", str(EXAMPLES / "tiny.yaml"), "--backend", "executorch")
    assert r.exit_code == 2
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert lines == ["convcost: error: --backend executorch: needs the executorch extra: pip "
                     "install 'convcost[executorch]' (convcost_no_such_runtime is not installed)"]


def test_csv_rows_carry_the_node_counts():
    r = invoke("compare", *SMALL, "--groups", "2", "--variants", "grouped,separable",
               "--backend", "eager,executorch", "--threads", "1", "-f", "csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {row["variant"]: (row["delegated_nodes:executorch"],
                             row["portable_nodes:executorch"]) for row in rows} == {
        "original": ("1", "0"), "grouped": ("1", "0"), "separable": ("2", "0")}
    assert "delegated_nodes:eager" not in rows[0]
    a = _analyze_cumsum("-f", "csv")
    assert a.exit_code == 0, a.output
    by_name = {row["name"]: row for row in csv.DictReader(io.StringIO(a.stdout))}
    assert (by_name["conv"]["delegated_nodes"], by_name["conv"]["portable_nodes"]) == ("1", "0")
    assert (by_name["total"]["delegated_nodes"], by_name["total"]["portable_nodes"]) == ("1", "1")


def test_channels_last_program_takes_nhwc_and_is_checked():
    cfg = TimingConfig(max_time_s=0.05, min_samples=3, min_rounds=2,
                       numerics=Numerics(threads=1, channels_last=True))
    e = TimingEngine(cfg, backend="executorch", budget_s=None)
    mods = [nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=2)]
    keys = e.add_group([Kernel(m, [(2, 8, 8, 8)], (2, 8, 8, 8)) for m in mods], paired=True)
    e.run()
    for k in keys:
        r = e.kernel(k)
        assert r.status == MEASURED, r.error
        assert r.check["max_rel_err"] <= r.check["tolerance"]
        assert r.lowering.complete


def test_budget_latency_on_executorch(tmp_path):
    b = latency_budget(tmp_path / "budget.yaml", "executorch")
    r = invoke("check", str(b), "--max-time", "0.05", "-f", "json")
    assert r.exit_code == 0, r.output
    lat = json.loads(r.stdout)["metrics"]["tiny"]["latency"]
    assert lat["backend"]["name"] == "executorch" and lat["setup_s"] > 0
    assert lat["backend"]["provider"] == "XNNPACK delegate"
    assert lat["lowering"]["delegate"] == "XNNPACK" and lat["lowering"]["delegated_nodes"] > 0
    assert lat["lowering"]["portable_nodes"] == 0
    assert not any("portable" in n for n in json.loads(r.stdout)["notices"])
    # a model XNNPACK does not take whole: a notice says so
    part = latency_budget(tmp_path / "partial.yaml", "executorch", name="cumsum",
                          model=CUMSUM_MODEL, defaults="defaults: {input: [1, 4, 6, 6]}\n")
    r = invoke("check", str(part), "--max-time", "0.05", "-f", "json")
    assert r.exit_code == 0, r.output
    assert "cumsum: latency on executorch: XNNPACK took 1/2 operator nodes; the rest ran on " \
           "the portable kernels (aten.cumsum.default)" in json.loads(r.stdout)["notices"]
