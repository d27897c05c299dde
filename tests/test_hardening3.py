"""Hardening, round three (issue 20): input values that used to end in exit 70, damaged or
hostile archives (the .pt2 corpus is in test_hardening.py), processes that must die with
convcost, the latency table, and gates that must not pass on what they did not measure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from convcost.cli import cli
from tests.conftest import EXAMPLES, default_signals

TINYNET = f"{EXAMPLES / 'models.py'}:TinyNet"


def one_error(r, code: int, *needles: str) -> str:
    assert "Traceback" not in r.output, r.output
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = [x for x in r.output.splitlines() if x.startswith("convcost: error:")]
    assert len(lines) == 1, r.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- --model-arg values

@pytest.mark.parametrize("value,needle", [
    ("n=" + "9" * 5000, "--model-arg n: '999"),
    ("l=" + "[" * 20000 + "]" * 20000, "--model-arg l: nesting deeper than"),
    ("d=2024-13-45", "--model-arg d: '2024-13-45' is not a valid !!timestamp"),
    ("b=!!bool maybe", "--model-arg b: 'maybe' is not a valid !!bool"),
    ("n=!!int eight", "--model-arg n: 'eight' is not a valid !!int"),
    ("t=!!timestamp never", "--model-arg t: 'never' is not a valid !!timestamp"),
    ("m={a: [1, 2]}", "not a list or mapping"),
    ("class=3", "KEY a Python identifier"),
])
def test_model_arg_values_are_one_line_exit_2(value, needle):
    r = CliRunner().invoke(cli, ["analyze", "--no-time", TINYNET, "--model-arg", value])
    line = one_error(r, 2, needle)
    assert len(line) < 400


def test_model_arg_unicode_identifier_is_an_identifier():
    """'ширина' is a Python identifier (budgets accept it): it reaches the builder, which
    refuses it as an unexpected keyword (exit 3), not the option parser (exit 2)."""
    from convcost.sources.load import parse_model_args

    assert parse_model_args(["ширина=16"]) == {"ширина": 16}
    r = CliRunner().invoke(cli, ["analyze", "--no-time", TINYNET, "--model-arg", "ширина=16"])
    one_error(r, 3, "ширина")


def test_baseline_nested_100000_deep_is_one_line(tmp_path):
    (tmp_path / "base.json").write_text("[" * 100_000 + "]" * 100_000)
    b = tmp_path / "budget.yaml"
    b.write_text(f"version: 1\nbaseline: base.json\nchecks:\n  - name: t\n    model: "
                 f"{EXAMPLES / 'tiny.yaml'}\n    limits: {{params: 1M}}\n")
    r = CliRunner().invoke(cli, ["check", str(b)])
    one_error(r, 2, "base.json", "nested too deep")


def test_spec_flow_nesting_is_convcost_own_limit(tmp_path):
    """The limit and its message are convcost's whatever the YAML library's own limit is:
    just over MAX_DEPTH (far below any parser's) and far over it."""
    from convcost.sources.yamlio import MAX_DEPTH

    for depth in (MAX_DEPTH + 1, 100_000):
        p = tmp_path / f"deep{depth}.yaml"
        p.write_text("input: [3, 8, 8]\nlayers: " + "[" * depth + "]" * depth + "\n")
        r = CliRunner().invoke(cli, ["analyze", "--no-time", str(p)])
        one_error(r, 2, f"{p}:2: nesting deeper than {MAX_DEPTH} levels")
    ok = tmp_path / "quoted.yaml"  # brackets inside quotes and comments are text
    ok.write_text("name: '" + "[" * 200 + "'  # " + "{" * 200 + "\ninput: [3, 8, 8]\n"
                  "layers:\n  - conv: {out: 4, kernel: 3}\n")
    r = CliRunner().invoke(cli, ["analyze", "--no-time", str(ok), "-f", "json"])
    assert r.exit_code == 0, r.output


def test_valid_yaml_values_still_load(tmp_path):
    from convcost.sources.yamlio import load_yaml_text

    d = load_yaml_text("a: !!int 8\nb: !!bool true\nc: 2024-01-05\nd: '[[['\n", "t")
    assert d["a"] == 8 and d["b"] is True and str(d["c"]) == "2024-01-05" and d["d"] == "[[["
    assert json.dumps({"x": d["a"]})


# --------------------------------------------------------------------------- processes and signals

PROC_NETS = '''
import os, signal, sys, time
from pathlib import Path
import torch
from torch import nn

PIDS = Path(os.environ["CONVCOST_TEST_PIDS"])


def note(what):
    with open(PIDS, "a") as f:
        f.write(f"{what} {os.getpid()}\\n")


class Spin(nn.Module):
    """The forward never ends (a busy loop, as a runaway model does)."""
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        note("forward")
        while True:
            pass


class Stubborn(nn.Module):
    """Ignores SIGTERM and SIGINT and sleeps in its forward."""
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        note("forward")
        while True:
            time.sleep(0.1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.c(x)


if os.environ.get("CONVCOST_TEST_HELPER"):  # a helper forked at import, holding stderr
    if os.fork() == 0:
        note("helper")
        while True:
            time.sleep(0.1)
'''


def _env(pids, **extra):
    import os

    from tests.conftest import ROOT

    e = {k: v for k, v in os.environ.items() if k != "CONVCOST_ISOLATION"}
    e.update({"PYTHONPATH": str(ROOT), "CONVCOST_TEST_PIDS": str(pids), **extra})
    return e


def _pids(path, what):
    import time

    end = time.monotonic() + 180
    while time.monotonic() < end:
        if path.exists():
            found = [int(line.split()[1]) for line in path.read_text().splitlines()
                     if line.startswith(what + " ")]
            if found:
                return found
        time.sleep(0.05)
    raise AssertionError(f"no {what} process was started")


def _alive(pid: int) -> bool:
    import os

    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - no /proc: ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def _gone_soon(pid: int, within_s: float = 60) -> bool:
    """Polls until ``pid`` is gone (a generous bound, never a timing figure)."""
    import time

    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _kill_all(pids_file):
    import contextlib
    import os
    import signal

    if pids_file.exists():
        for line in pids_file.read_text().splitlines():
            with contextlib.suppress(OSError):
                os.kill(int(line.split()[1]), signal.SIGKILL)


@pytest.fixture
def procnets(tmp_path):
    (tmp_path / "procnets.py").write_text(PROC_NETS)
    yield tmp_path
    _kill_all(tmp_path / "pids")


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_sigkilled_convcost_takes_the_model_process_with_it(procnets):
    import signal
    import subprocess
    import sys

    pids = procnets / "pids"
    p = subprocess.Popen([sys.executable, "-m", "convcost", "analyze", "--no-time",
                          f"{procnets / 'procnets.py'}:Spin", "--timeout", "600"],
                         env=_env(pids), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         preexec_fn=default_signals)
    try:
        model = _pids(pids, "forward")[0]
        assert model != p.pid
        p.send_signal(signal.SIGKILL)
        p.wait(60)
        assert _gone_soon(model), "the model's process outlived a SIGKILLed convcost"
    finally:
        p.kill()


@pytest.mark.parametrize("sig,code,word", [("SIGTERM", 143, "terminated"),
                                           ("SIGINT", 130, "interrupted")])
def test_a_model_that_ignores_signals_is_ended(procnets, sig, code, word):
    """SIGTERM/Ctrl-C reach the model's process group; one that ignores them is killed after
    a short grace, and convcost exits 143/130 long before --timeout (600 s)."""
    import signal
    import subprocess
    import sys
    import time

    pids = procnets / "pids"
    p = subprocess.Popen([sys.executable, "-m", "convcost", "analyze", "--no-time",
                          f"{procnets / 'procnets.py'}:Stubborn", "--timeout", "600"],
                         env=_env(pids), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=default_signals)
    try:
        model = _pids(pids, "forward")[0]
        time.sleep(0.2)  # the forward has set SIG_IGN by the time it noted itself
        started = time.monotonic()
        p.send_signal(getattr(signal, sig))
        _, err = p.communicate(timeout=300)
        waited = time.monotonic() - started
    finally:
        p.kill()
    assert p.returncode == code, err
    assert word in err and "Traceback" not in err
    assert waited < 300  # far below the 600 s timeout the run was given
    assert _gone_soon(model)


def test_a_helper_forked_at_import_cannot_hold_the_output_open(procnets):
    """`2>&1 | cat`: the pipe closes when convcost ends, because the helper the model forked
    is in the model's process group, which convcost ends."""
    import subprocess
    import sys

    pids = procnets / "pids"
    p = subprocess.run(["bash", "-c", f"{sys.executable} -m convcost analyze --no-time "
                        f"{procnets / 'procnets.py'}:Net -f json 2>&1 | cat"],
                       env=_env(pids, CONVCOST_TEST_HELPER="1"), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout
    assert '"params": 112' in p.stdout
    helper = _pids(pids, "helper")[0]
    assert _gone_soon(helper), "the model's helper outlived the run"


def test_ctrl_c_during_start_up_is_quiet(tmp_path):
    """SIGINT while the command is still importing click: no traceback, exit 130. A stand-in
    `click` module on the path sends the signal while it is being imported."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    (tmp_path / "click.py").write_text("import os, signal, time\n"
                                       "os.kill(os.getpid(), signal.SIGINT)\ntime.sleep(30)\n")
    p = subprocess.run([sys.executable, "-m", "convcost", "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env=_env(tmp_path / "pids", PYTHONPATH=f"{tmp_path}:{ROOT}"))
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == 130, (p.returncode, p.stderr)
    assert p.stderr.strip() == "convcost: interrupted"


def test_a_model_file_that_is_a_fifo_is_refused(tmp_path):
    import os
    import threading

    fifo = tmp_path / "net.py"
    os.mkfifo(fifo)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", CliRunner().invoke(
        cli, ["analyze", "--no-time", f"{fifo}:Net"])), daemon=True)
    t.start()
    t.join(120)
    if t.is_alive():
        with open(fifo, "w") as f:
            f.write("x")
        pytest.fail("importing a FIFO blocked")
    one_error(out["r"], 3, "is a FIFO (named pipe), expected a .py file")


def test_a_pt2_that_is_a_directory_says_so(tmp_path):
    d = tmp_path / "model.pt2"
    d.mkdir()
    r = CliRunner().invoke(cli, ["analyze", "--no-time", str(d)])
    one_error(r, 3, "is a directory, expected a .pt2 archive")


# --------------------------------------------------------------------------- the latency table

def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def _compare_json(*extra: str):
    return CliRunner().invoke(cli, ["compare", "--in", "8", "--out", "8", "--size", "8", "--batch",
                                    "1", "--groups", "2", "-f", "json", "--max-time", "0.05",
                                    "--time-budget", "600", *extra])


@pytest.mark.parametrize("kernel_sql,pair_sql", [
    ("median_ms = -5", "ratio = -0.5"),
    ("median_ms = 1e300, max_ms = 1e301", "ratio = 1e300, hi = 1e301"),
    ("median_ms = 'abc'", "ratio = 'inf'"),
    ("in_shapes = '[[1, 8'", "lo = 9e999, hi = 9e999"),  # 9e999 is inf in SQLite
    ("n = -3", "rounds = 0"),
])
def test_poisoned_rows_are_ignored_and_measured_again(isolated_cache, kernel_sql, pair_sql):
    import sqlite3

    # a cap far above what the 5 rounds of a stored ratio take: kernels and ratios are stored
    assert _compare_json("--max-time", "10").exit_code in (0, 4)
    db = isolated_cache / "latency.sqlite"
    con = sqlite3.connect(db)
    n_kernels = con.execute("SELECT COUNT(*) FROM kernels").fetchone()[0]
    n_pairs = con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
    assert n_kernels >= 1 and n_pairs >= 1
    con.execute(f"UPDATE kernels SET {kernel_sql}")
    con.execute(f"UPDATE pairs SET {pair_sql}")
    con.commit()
    con.close()
    r = _compare_json()
    assert r.exit_code in (0, 4), r.output
    assert "Traceback" not in r.output
    d = _strict_json(r.stdout)
    assert any("ignored an invalid row" in n for n in d["timing"]["notices"])
    for v in d["variants"]:
        assert v["latency_ms"] is None or 0 < v["latency_ms"] < 1e6
        assert v.get("latency_source") != "cached"  # every poisoned figure was measured again
        ci = v.get("latency_ratio_ci")
        assert ci is None or all(0 < x < 1e6 for x in ci)
    for cmd in (["cache", "list"], ["cache", "list", "-f", "json"], ["cache", "list", "-f", "csv"]):
        lr = CliRunner().invoke(cli, cmd)
        assert lr.exit_code == 0 and "Traceback" not in lr.output, lr.output
    _strict_json(CliRunner().invoke(cli, ["cache", "list", "-f", "json"]).stdout)


def test_implausible_figures_are_invalid_rows():
    """Finite but absurd figures (a 1e300 ms call, a ratio of 1e300 or 1e-9) are refused too;
    a stored ratio is used only beside the stored figures of both its kernels."""
    from convcost.timing.table import kernel_problem, pair_problem
    from tests.conftest import stored_row

    def raw(**kw):  # as the table stores it: in_shapes as JSON text
        return {**stored_row("k", **kw), "in_shapes": "[[1, 8, 8, 8]]"}

    assert kernel_problem(raw()) is None
    assert kernel_problem(raw(median=1e300)) is not None
    pair = {"ratio": 0.5, "lo": 0.4, "hi": 0.6, "rounds": 10, "measured_at": "2026"}
    assert pair_problem(pair) is None
    for bad in ({"ratio": 1e300, "hi": 1e301}, {"lo": 1e-9}, {"rounds": 0}, {"ratio": 0.7}):
        assert pair_problem({**pair, **bad}) is not None, bad


def test_bad_in_shapes_do_not_break_cache_list(isolated_cache):
    from convcost.timing.table import LatencyTable
    from tests.conftest import stored_row

    t = LatencyTable.open()
    t.put_kernel(stored_row("good"))
    t.put_kernel(stored_row("bad", label="bad one"))
    t.con.execute("UPDATE kernels SET in_shapes = '{not json' WHERE key = 'bad'")
    t.close()
    r = CliRunner().invoke(cli, ["cache", "list", "-f", "json"])
    assert r.exit_code == 0, r.output
    assert [m["key"] for m in _strict_json(r.stdout)["measurements"]] == ["good"]
    assert "ignored an invalid row for 'bad one' (in_shapes is not JSON)" in r.stderr


def test_the_table_is_never_written_through_a_symlink(isolated_cache, tmp_path):
    project_file = tmp_path / "precious.txt"
    project_file.write_text("keep me\n")
    (isolated_cache / "latency.sqlite").symlink_to(project_file)
    r = _compare_json()
    assert r.exit_code in (0, 4), r.output
    assert project_file.read_text() == "keep me\n"
    assert (isolated_cache / "latency.sqlite").is_symlink()
    assert any("symbolic link" in n for n in _strict_json(r.stdout)["timing"]["notices"])
    c = CliRunner().invoke(cli, ["cache", "clear"])
    one_error(c, 2, "cannot clear the latency table", "symbolic link")
    assert project_file.read_text() == "keep me\n"


def test_cache_clear_on_an_unusable_or_read_only_table(isolated_cache):
    import sqlite3

    from convcost.errors import InputError
    from convcost.timing.table import LatencyTable

    (isolated_cache / "latency.sqlite").mkdir()
    one_error(CliRunner().invoke(cli, ["cache", "clear"]), 2, "cannot clear the latency table")
    (isolated_cache / "latency.sqlite").rmdir()
    t = LatencyTable.open()
    t.close()
    path = isolated_cache / "latency.sqlite"
    t.con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    with pytest.raises(InputError, match="cannot clear the latency table"):
        t.clear()
    t.writable = False
    with pytest.raises(InputError, match="cannot clear"):
        t.clear()


def test_output_paths_follow_one_rule(tmp_path):
    """A symlink is followed (its target replaced, the link kept); /dev/stdout is the open
    stream; a device is written in place; a dangling link into a missing folder is refused."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    spec = str(EXAMPLES / "tiny.yaml")
    target = tmp_path / "report.json"
    target.write_text("old")
    (tmp_path / "link.json").symlink_to(target)
    r = CliRunner().invoke(cli, ["analyze", "--no-time", spec, "-o", str(tmp_path / "link.json")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "link.json").is_symlink() and _strict_json(target.read_text())["totals"]
    with open(tmp_path / "out.json", "w") as f:
        p = subprocess.run([sys.executable, "-m", "convcost", "analyze", "--no-time", spec, "-o",
                            "/dev/stdout", "-f", "json"], stdout=f, stderr=subprocess.PIPE, text=True,
                           env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert p.returncode == 0, p.stderr
    assert _strict_json((tmp_path / "out.json").read_text())["totals"]["params"] == 13450
    assert Path("/dev/stdout").is_symlink()  # never replaced by a regular file
    r = CliRunner().invoke(cli, ["analyze", "--no-time", spec, "-o", "/dev/null"])
    assert r.exit_code == 0
    (tmp_path / "dangling.json").symlink_to(tmp_path / "missing" / "x.json")
    r = CliRunner().invoke(cli, ["analyze", "--no-time", spec, "-o", str(tmp_path / "dangling.json")])
    one_error(r, 2, "does not exist", "the link")


def test_a_figure_below_the_sample_minimum_is_marked_and_exits_4(tmp_path, isolated_cache):
    """Every call takes at least 150 ms and the budget is 1.2 s: no kernel can reach the
    10-sample minimum, whatever the machine's speed. Each one is either not measured (budget)
    or quoted as undersampled, never as a plain figure; nothing is stored; exit 4."""
    net = tmp_path / "slow.py"
    net.write_text("import time\nfrom torch import nn\n"
                   "class Slow(nn.Conv2d):\n    def forward(self, x):\n        time.sleep(0.15)\n"
                   "        return super().forward(x)\n"
                   "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                   "        self.a = Slow(3, 4, 3, padding=1)\n"
                   "    def forward(self, x):\n        return self.a(x)\n")
    r = CliRunner().invoke(cli, ["analyze", f"{net}:Net", "--input-shape", "1,3,8,8",
                                 "--time-budget", "1.2", "--max-time", "30", "-f", "json"])
    assert r.exit_code == 4, r.output
    d = _strict_json(r.stdout)
    t = d["timing"]
    for row in d["layers"]:
        if row["latency_ms"] is not None:
            assert any(row["name"] in u for u in t["undersampled"]), (row["name"], t)
    assert t["undersampled"] or t["not_measured_budget"]
    if t["undersampled"]:
        assert "sample minimum" in r.stderr
    from convcost.timing.table import LatencyTable

    assert LatencyTable.open().count()[0] == 0


def test_a_latency_limit_that_could_not_be_measured_never_passes(tmp_path):
    """onnxruntime cannot export this model: the latency limit is an error (exit 4) by
    default, a warning with on_unmeasured: warn, never PASSED with a skip."""
    pytest.importorskip("onnxruntime")
    from tests.conftest import ROOT

    model = f"{ROOT / 'tests' / 'fixtures' / 'backend_models.py'}:ConvEig"
    body = (f"checks:\n  - name: eig\n    model: {model}\n    input: [1, 3, 8, 8]\n"
            "    limits:\n      params: 10M\n      latency: {error: 10s, backend: onnxruntime}\n")
    b = tmp_path / "b.yaml"
    b.write_text("version: 1\n" + body)
    r = CliRunner().invoke(cli, ["check", str(b), "-f", "json"])
    assert r.exit_code == 4, r.output
    d = _strict_json(r.stdout)
    lat = next(x for x in d["results"] if x["metric"] == "latency")
    assert lat["verdict"] == "error" and d["passed"] is False
    b.write_text("version: 1\non_unmeasured: warn\n" + body)
    r = CliRunner().invoke(cli, ["check", str(b)])
    assert r.exit_code == 0 and "WARN eig: latency could not be measured" in r.stdout
    b.write_text("version: 1\non_unmeasured: maybe\n" + body)
    one_error(CliRunner().invoke(cli, ["check", str(b)]), 2, "on_unmeasured")


# --------------------------------------------------------------------------- both counters agree

class _ConvFn(__import__("torch").autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        import torch

        return torch.nn.functional.conv2d(x, w, padding=1)

    @staticmethod
    def backward(ctx, g):
        return None, None


def _counter_models():
    import torch
    from torch import nn

    class InFunction(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 16, 3, padding=1)
            self.w = nn.Parameter(torch.randn(16, 16, 3, 3))

        def forward(self, x):
            return _ConvFn.apply(self.c(x), self.w)

    class Lstm(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3)
            self.lstm = nn.LSTM(48, 64, num_layers=2, bidirectional=True, batch_first=True,
                                proj_size=16)

        def forward(self, x):
            return self.lstm(self.c(x).flatten(1, 2).transpose(1, 2))[0]

    class GruRnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.g, self.r = nn.GRU(8, 16), nn.RNN(16, 4)

        def forward(self, x):
            return self.r(self.g(x)[0])[0]

    class Einsum(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            y, z = self.c(x).mean((2, 3)), self.c(x).flatten(2)
            return (torch.einsum("bi,bj->bij", y, y).sum() + torch.einsum("bcn,bdn->bcd", z, z).sum()
                    + torch.einsum("...n,...n", z, z).sum())

    # (model, input shape, expected MACs from the closed forms)
    conv = 16 * 16 * 3 * 3 * 16 * 16 + 3 * 16 * 9 * 16 * 16
    lstm = 6 * (2 * (256 * 48 + 256 * 16 + 16 * 64) + 2 * (256 * 32 + 256 * 16 + 16 * 64))
    gru = 10 * (48 * 8 + 48 * 16) + 10 * (4 * 16 + 4 * 4)
    einsum = 1 * 8 * 8 + 8 * 8 * 64 + 8 * 64
    return [(InFunction(), (1, 3, 16, 16), conv),
            (Lstm(), (1, 3, 8, 8), 8 * 27 * 36 + lstm),
            (GruRnn(), (5, 2, 8), gru),
            (Einsum(), (1, 3, 8, 8), 2 * 8 * 27 * 64 + einsum)]


@pytest.mark.parametrize("index", range(4), ids=["autograd_function", "lstm", "gru_rnn", "einsum"])
def test_meta_and_real_counters_agree(index):
    """The same figures, operator by operator, whichever counter --count-on picks, and equal to
    the closed form; nothing listed as not counted by one and counted by the other."""
    from convcost.counting.analysis import analyze_model

    model, shape, expected = _counter_models()[index]
    meta = analyze_model(model.eval(), [shape], source="t", name="t", count_on="meta")
    real = analyze_model(model.eval(), [shape], source="t", name="t", count_on="real")
    assert meta.macs == real.macs == expected
    assert meta.by_operator == real.by_operator
    assert meta.unsupported_ops == real.unsupported_ops
    assert not any(k.startswith("prim::PythonOp") for k in real.unsupported_ops)


def test_rnn_and_einsum_match_torch_flop_counter():
    """torch.utils.flop_counter counts the matmuls an LSTM and a contraction einsum decompose
    into (2 FLOPs per MAC): the closed forms agree."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from convcost.counting.analysis import analyze_model

    for index in (1, 2):
        model, shape, _ = _counter_models()[index]
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model.eval()(torch.randn(shape))
        ours = analyze_model(model, [shape], source="t", name="t", count_on="meta")
        assert 2 * ours.macs == fc.get_total_flops()
    from convcost.counting.handles import einsum_macs

    a, b = torch.randn(4, 5, 6), torch.randn(4, 6, 7)
    with FlopCounterMode(display=False) as fc:
        torch.einsum("bik,bkj->bij", a, b)
    assert 2 * einsum_macs("bik,bkj->bij", [[4, 5, 6], [4, 6, 7]]) == fc.get_total_flops()


def test_memory_guard_uses_traced_shapes(tmp_path):
    """A 3 -> 512 conv on a 16384 x 16384 image: the input is 3 GiB, the output 512 GiB. The
    guard traces the shapes on meta tensors and refuses (exit 2) before allocating anything,
    on the counting path and on the timing path."""
    net = tmp_path / "big.py"
    net.write_text("from torch import nn\nclass Net(nn.Module):\n    def __init__(self):\n"
                   "        super().__init__()\n        self.c = nn.Conv2d(3, 512, 3, padding=1)\n"
                   "    def forward(self, x):\n        return self.c(x)\n")
    for extra in (["--no-time", "--count-on", "real"], ["--max-time", "0.01"]):
        r = CliRunner().invoke(cli, ["analyze", f"{net}:Net", "--input-shape", "1,3,16384,16384",
                                     *extra])
        one_error(r, 2, "largest activation", "module 'c'", "--ignore-memory-limit")


def test_poisoned_calibration_cache_is_ignored(isolated_cache):
    """Peaks with a negative bandwidth, an infinite throughput, a wrong type or nested 100,000
    deep are never quoted (the report says to calibrate), and nothing ends in exit 70."""
    import torch

    from convcost.timing.device import Numerics, fingerprint, fingerprint_key
    from convcost.timing.roofline import lookup

    key = fingerprint_key(fingerprint(Numerics("cpu", "fp32")))
    good = {"key": key, "device": "cpu", "name": "x", "bandwidth_gbs": 10.0,
            "tflops": {"fp32": 1.0}, "measured_at": "2026-11-23", "details": {}}
    cache = isolated_cache / "peaks.json"
    for bad in ({**good, "bandwidth_gbs": -5}, {**good, "tflops": {"fp32": float("inf")}},
                {**good, "tflops": "fast"}, {**good, "name": 3}):
        cache.write_text(json.dumps({key: bad}))
        assert lookup(Numerics("cpu", "fp32")) is None
    cache.write_text("[" * 100_000 + "]" * 100_000)
    assert lookup(Numerics("cpu", "fp32")) is None
    cache.write_text(json.dumps({key: good}))
    assert lookup(Numerics("cpu", "fp32")) is not None
    assert torch.get_num_threads() >= 1
