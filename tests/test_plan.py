"""`convcost plan` (issue 23): the exact solver against brute force, infeasible and pinned
cases, the front, plan files round-tripping through --apply, and the command's exit codes."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from convcost.cli import cli
from convcost.plan.solver import (
    Infeasible,
    LayerOptions,
    Option,
    Problem,
    brute_force,
    frontier,
    solve,
)
from tests.conftest import EXAMPLES
from tests.test_hardening3 import one_error

pytest.importorskip("scipy")

LAYERS = str(EXAMPLES / "layers.yaml")
TINY = str(EXAMPLES / "tiny.yaml")


def _problem(rng: random.Random, n_layers: int, n_opts: int, objective: str,
             limit_share: dict[str, float]) -> Problem:
    layers = []
    for i in range(n_layers):
        opts = [Option("keep", None, None, rng.randint(1000, 5000), rng.randint(10**6, 10**7),
                       rng.uniform(1, 5))]
        opts += [Option(f"v{j}", "grouped", 2, rng.randint(50, 5000), rng.randint(10**5, 10**7),
                        rng.uniform(0.3, 5)) for j in range(n_opts - 1)]
        layers.append(LayerOptions(f"l{i}", "conv", tuple(opts), pinned=rng.random() < 0.15))
    p = Problem(tuple(layers), {"params": 500, "macs": 10**5, "latency": 0.5}, {}, objective)
    limits = {m: p.extreme(m) + s * (p.extreme(m, best=False) - p.extreme(m))
              for m, s in limit_share.items()}
    return Problem(p.layers, p.rest, limits, objective)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10**6), n_layers=st.integers(1, 5), n_opts=st.integers(1, 4),
       objective=st.sampled_from(["latency", "params", "macs"]),
       shares=st.dictionaries(st.sampled_from(["params", "macs", "latency"]),
                              st.floats(-0.2, 1.0), max_size=3))
def test_solver_equals_brute_force(seed, n_layers, n_opts, objective, shares):
    p = _problem(random.Random(seed), n_layers, n_opts, objective, shares)
    best = brute_force(p)
    if best is None:
        with pytest.raises(Infeasible):
            solve(p)
        return
    s = solve(p)
    got, want = s.totals[objective], best.totals[objective]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
    for m, lim in p.limits.items():  # the plan meets every limit
        assert s.totals[m] <= lim * (1 + 1e-9)
    for lay, i in zip(p.layers, s.choice, strict=True):
        assert i < len(lay.allowed)  # pinned layers kept


def test_infeasible_names_the_tightest_figure():
    p = _problem(random.Random(1), 3, 3, "latency", {})
    least = p.extreme("params")
    with pytest.raises(Infeasible) as e:
        solve(Problem(p.layers, p.rest, {"params": least * 0.5}, "latency"))
    assert "--max-params" in str(e.value) and "the least params any plan reaches" in str(e.value)
    # each alone is feasible, both together are not
    fast = solve(Problem(p.layers, p.rest, {}, "latency"))
    small = solve(Problem(p.layers, p.rest, {}, "params"))
    both = {"params": small.totals["params"] * 1.0000001,
            "latency": fast.totals["latency"] * 1.0000001}
    if brute_force(Problem(p.layers, p.rest, both, "latency")) is None:
        with pytest.raises(Infeasible) as e:
            solve(Problem(p.layers, p.rest, both, "latency"))
        assert "together" in str(e.value)


def test_pinned_layers_and_the_front():
    p = _problem(random.Random(2), 6, 4, "latency", {})
    pinned = Problem(tuple(LayerOptions(lay.name, lay.kind, lay.options, pinned=True)
                           for lay in p.layers), p.rest, {}, "latency")
    assert solve(pinned).choice == (0,) * 6
    front = frontier(p, 5)
    assert 2 <= len(front) <= 5 and len({s.choice for s in front}) == len(front)
    assert front[0].totals["latency"] == pytest.approx(solve(p).totals["latency"])
    small = solve(Problem(p.layers, p.rest, {}, "params")).totals["params"]
    assert front[-1].totals["params"] == pytest.approx(small)
    lat = [s.totals["latency"] for s in front]
    par = [s.totals["params"] for s in front]
    assert lat == sorted(lat) and par == sorted(par, reverse=True)  # along the front


def test_plan_on_counts_equals_brute_force_on_a_real_spec():
    """The figures the plan reports are exact counts: brute force over the same options agrees,
    and the rest of the model plus the chosen options is the planned model counted anew."""
    from convcost.jobs import CompareRequest, PlanRequest, SourceRequest, run_plan
    from convcost.plan.solver import Problem as P

    req = PlanRequest(CompareRequest(("grouped", "depthwise", "separable"), (1, 2, 4)),
                      (("params", "0.5x"),), "macs")
    out = run_plan(SourceRequest(TINY), req, None).report
    o = out.options
    prob = P(tuple(o.layers), o.rest, {"params": out.limits[0].value}, "macs")
    assert out.best.totals["macs"] == brute_force(prob).totals["macs"]
    assert out.best.totals["params"] <= 0.5 * o.original["params"]


def test_plan_file_round_trips_through_apply(tmp_path):
    plan = tmp_path / "plan.yaml"
    r = CliRunner().invoke(cli, ["plan", LAYERS, "--no-time", "--minimize", "params",
                                 "--max-macs", "0.5x", "--keep", "dilated", "-o", str(plan),
                                 "-f", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert plan.is_file() and "convcost_plan: 1" in plan.read_text()
    chosen = {x["name"]: x["choice"] for x in d["plan"]["layers"]}
    assert chosen["dilated"] == "keep" and d["plan"]["predicted"]["macs"] <= 0.5 * d["original"]["macs"]
    assert d["timed"] is False and "not accuracy" in d["limitations"]
    a = CliRunner().invoke(cli, ["analyze", LAYERS, "--apply", str(plan), "--no-time", "-f",
                                 "json"])
    assert a.exit_code == 0, a.output
    totals = json.loads(a.stdout)["totals"]
    assert totals["params"] == d["plan"]["predicted"]["params"]  # exact, counted anew
    assert totals["macs"] == d["plan"]["predicted"]["macs"]
    assert any("plan" in n and "applied" in n for n in json.loads(a.stdout)["notes"])
    c = CliRunner().invoke(cli, ["compare", LAYERS, "--apply", str(plan), "--no-time",
                                 "--groups", "2"])
    assert c.exit_code == 0, c.output
    spec = tmp_path / "planned.yaml"
    e = CliRunner().invoke(cli, ["analyze", LAYERS, "--apply", str(plan), "--no-time",
                                 "--export-spec", str(spec)])
    assert e.exit_code == 0, e.output
    s = CliRunner().invoke(cli, ["analyze", str(spec), "--no-time", "-f", "json"])
    assert json.loads(s.stdout)["totals"]["macs"] == d["plan"]["predicted"]["macs"]
    b = tmp_path / "budget.yaml"
    b.write_text(f"version: 1\nchecks:\n  - name: planned\n    model: {LAYERS}\n"
                 f"    apply: plan.yaml\n    limits: {{params: '{d['plan']['predicted']['params']}'}}\n")
    k = CliRunner().invoke(cli, ["check", str(b), "--no-time", "-f", "json"])
    assert k.exit_code == 0, k.output
    assert json.loads(k.stdout)["results"][0]["actual"] == d["plan"]["predicted"]["params"]


@pytest.mark.parametrize(("body", "needle"), [
    ("convcost_plan: 2\nlayers: []\n", "'convcost_plan' must be 1"),
    ("convcost_plan: 1\nlayers: []\nextra: 1\n", "unknown key 'extra'"),
    ("convcost_plan: 1\nlayers:\n  - {name: \"__import__('os').system('x')\", variant: keep}\n",
     "is not a module path"),
    ("convcost_plan: 1\nlayers:\n  - {name: conv3x3_64, variant: magic}\n", "variant 'magic'"),
    ("convcost_plan: 1\nlayers:\n  - {name: conv3x3_64, variant: grouped, groups: two}\n",
     "needs an integer"),
    ("convcost_plan: 1\nlayers:\n  - {name: conv3x3_64, variant: grouped, groups: 1e9}\n",
     "needs an integer"),
    ("convcost_plan: 1\nlayers:\n  - {name: nothing.here, variant: depthwise}\n",
     "no such module"),
    ("convcost_plan: 1\nlayers:\n  - {name: conv3x3_64, variant: grouped, groups: 5}\n",
     "cannot become grouped g=5"),
    ("convcost_plan: 1\nlayers:\n  - {name: conv3x3_64, variant: keep}\n"
     "  - {name: conv3x3_64, variant: keep}\n", "listed twice"),
])
def test_bad_plan_files_are_one_line(tmp_path, body, needle):
    p = tmp_path / "plan.yaml"
    p.write_text(body)
    line = one_error(CliRunner().invoke(cli, ["analyze", LAYERS, "--apply", str(p),
                                              "--no-time"]), 2, needle)
    assert str(p) in line


def test_plan_refusals_are_one_line(tmp_path):
    one_error(CliRunner().invoke(cli, ["plan", TINY, "--no-time"]), 2, "--no-time")
    one_error(CliRunner().invoke(cli, ["plan", TINY, "--no-time", "--minimize", "params",
                                       "--frontier", "3"]), 2, "--frontier")
    one_error(CliRunner().invoke(cli, ["plan", TINY, "--no-time", "--minimize", "params",
                                       "--max-params", "10"]), 2, "cannot be met",
              "the least params any plan reaches")
    one_error(CliRunner().invoke(cli, ["plan", TINY, "--no-time", "--minimize", "params",
                                       "--max-params", "0.6y"]), 2, "--max-params")
    one_error(CliRunner().invoke(cli, ["plan", TINY, "--no-time", "--minimize", "params",
                                       "--max-params", "-1x"]), 2, "--max-params")


def test_missing_solver_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    one_error(CliRunner().invoke(cli, ["plan", TINY, "--no-time", "--minimize", "params"]), 2,
              "pip install 'convcost[plan]'")


def test_timed_plan_is_verified_end_to_end(tmp_path):
    pytest.importorskip("matplotlib")
    r = CliRunner().invoke(cli, ["plan", TINY, "--max-params", "0.8x", "--max-time", "0.05",
                                 "-f", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["timed"] and d["verified"] and d["objective"] == "latency"
    (m,) = d["plan"]["measured"]
    assert m["backend"] == "eager" and m["ratio"] > 0 and m["planned_ms"] > 0
    lo, hi = m["ratio_ci"]
    assert lo <= m["ratio"] <= hi
    assert d["plan"]["predicted"]["params"] <= 0.8 * d["original"]["params"]
    assert d["plan"]["predicted_ratio"]["latency"] > 0
    png = tmp_path / "front.png"
    t = CliRunner().invoke(cli, ["plan", TINY, "--max-params", "0.8x", "--max-time", "0.05",
                                 "--frontier", "3", "--plot", str(png)])
    assert t.exit_code == 0, t.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "the Pareto front" in t.stdout and "measured on eager" in t.stdout
    assert "budget entry for the planned model" in t.stdout


def test_a_plan_over_its_latency_limit_is_exit_1():
    from convcost.plan.costs import Limit, Options
    from convcost.plan.result import PlannedModel, PlanReport, Verified

    best = PlannedModel((0,), {"latency": 1.0}, {"latency": 0.5},
                        [Verified("eager", 2.0, 1.5, 0.75, (0.7, 0.8), 10)])
    rep = PlanReport("s", "s", "latency", [Limit("latency", "1ms", None, 1.0)],
                     Options([], {}, {}), [best], True, True)
    assert rep.broken_latency() and best.agrees(best.verified[0]) is False


# --------------------------------------------------------------------------- another device


def _as_phone(doc: dict) -> dict:
    """An export as if measured on another device: its name, threads, keys and figures (x3)."""
    import hashlib

    def key(k: str) -> str:
        return hashlib.md5(f"phone{k}".encode()).hexdigest()

    for m in doc["measurements"]:
        m.update(device_name="Phone X", threads=4, key=key(m["key"]))
        for f in ("median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "p10_ms", "p90_ms",
                  "p99_ms"):
            if m.get(f) is not None:
                m[f] *= 3
    for p in doc["pairs"]:
        p.update(base_key=key(p["base_key"]), var_key=key(p["var_key"]))
    return doc


def test_plan_from_an_imported_table_of_another_device(tmp_path, monkeypatch):
    r = CliRunner().invoke(cli, ["plan", TINY, "--max-params", "0.8x", "--max-time", "0.05",
                                 "-f", "json"])
    assert r.exit_code == 0, r.output
    here = json.loads(r.stdout)
    exported = tmp_path / "t.json"
    assert CliRunner().invoke(cli, ["cache", "export", str(exported)]).exit_code == 0
    phone = tmp_path / "phone.json"
    phone.write_text(json.dumps(_as_phone(json.loads(exported.read_text()))))
    monkeypatch.setenv("CONVCOST_CACHE_DIR", str(tmp_path / "other"))
    i = CliRunner().invoke(cli, ["cache", "import", str(phone)])
    assert i.exit_code == 0 and "imported" in i.stdout, i.output
    p = CliRunner().invoke(cli, ["plan", TINY, "--max-params", "0.8x", "--from-table",
                                 "--target", "phone", "-f", "json"])
    assert p.exit_code == 0, p.output
    d = json.loads(p.stdout)
    assert "Phone X" in d["from_table"] and d["verified"] is False and d["plan"]["measured"] == []
    assert d["original"]["latency"] == pytest.approx(3 * here["original"]["latency"])
    t = CliRunner().invoke(cli, ["plan", TINY, "--max-params", "0.8x", "--from-table",
                                 "--target", "phone"])
    assert "planned from the latency table alone" in t.stdout and "nothing was measured" in t.stdout
    one_error(CliRunner().invoke(cli, ["plan", TINY, "--from-table", "--target", "tpu"]), 2,
              "--target 'tpu'", "Phone X@4")
    one_error(CliRunner().invoke(cli, ["plan", TINY, "--target", "phone"]), 2, "--from-table")
    one_error(CliRunner().invoke(cli, ["plan", TINY, "--from-table", "--fresh"]), 2,
              "--from-table")
    # this machine's own figures are not in that table: nothing to plan from
    one_error(CliRunner().invoke(cli, ["plan", TINY, "--max-params", "0.8x", "--from-table"]),
              2, "not in the latency table")


def test_cache_import_refuses_malformed_rows_one_line_each(tmp_path):
    CliRunner().invoke(cli, ["compare", TINY, "--groups", "2", "--variants", "grouped",
                             "--max-time", "0.05", "--no-model"])
    exported = tmp_path / "t.json"
    assert CliRunner().invoke(cli, ["cache", "export", str(exported)]).exit_code == 0
    doc = _as_phone(json.loads(exported.read_text()))
    good = len(doc["measurements"])
    bad = [dict(doc["measurements"][0], key="not-hex"),
           dict(doc["measurements"][0], median_ms=-1.0),
           dict(doc["measurements"][0], label="x" * 10_000),
           dict(doc["measurements"][0], in_shapes=[[1, -3]]),
           dict(doc["measurements"][0], converged="yes"),
           "a string", {"key": "0" * 32}]
    doc["measurements"] += bad
    doc["pairs"].append({"base_key": "0" * 32, "var_key": "1" * 32, "ratio": float("nan")})
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(doc))
    r = CliRunner().invoke(cli, ["cache", "import", str(f)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    refused = [x for x in r.output.splitlines() if "not imported" in x]
    assert len(refused) == len(bad) + 1 and all(str(f) in x for x in refused)
    assert f"imported {good} measurement(s)" in r.stdout
    for text in ("not json", "[" * 100_000, json.dumps({"measurements": 3})):
        f.write_text(text)
        one_error(CliRunner().invoke(cli, ["cache", "import", str(f)]), 2, str(f))
    d = CliRunner().invoke(cli, ["cache", "import", str(tmp_path)])  # a directory
    assert d.exit_code == 2 and "Traceback" not in d.output


def test_the_budget_entry_guards_the_planned_model(tmp_path):
    """The report ends with a ready `convcost check` entry: with the plan file beside it, the
    planned model passes its own params and MACs limits (exact integers, not rounded)."""
    import shutil

    spec = tmp_path / "layers.yaml"
    shutil.copy(LAYERS, spec)
    r = CliRunner().invoke(cli, ["plan", str(spec), "--no-time", "--minimize", "params",
                                 "--max-macs", "0.5x", "-o", str(tmp_path / "plan.yaml")])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    start = lines.index("checks:")
    entry = [x for x in lines[start:start + 8] if not x.startswith("      latency")]
    entry = entry[: next(i for i, x in enumerate(entry) if "macs:" in x) + 1]
    b = tmp_path / "budget.yaml"
    b.write_text("version: 1\n" + "\n".join(entry) + "\n")
    k = CliRunner().invoke(cli, ["check", str(b), "--no-time", "-f", "json"])
    assert k.exit_code == 0, (k.output, b.read_text())
    assert {x["metric"] for x in json.loads(k.stdout)["results"]} == {"params", "macs"}
