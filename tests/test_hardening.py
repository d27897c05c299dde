"""Hardening, round two: untrusted files run no code, model code is contained in a child
process, outputs are atomic, signals keep finished work, nothing hangs. Most tests run the real
`python -m convcost` (the fork path, as a user's shell does); no timing thresholds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from convcost.cli import cli
from tests.conftest import EXAMPLES, ROOT, default_signals

CORPUS = ROOT / "tests" / "bad_inputs"
PT2 = CORPUS / "pt2"


def convcost(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300,
             stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """A real convcost process with model isolation as the command uses it (fork)."""
    e = {k: v for k, v in os.environ.items() if k != "CONVCOST_ISOLATION"}
    e.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "convcost", *args], cwd=cwd or ROOT, env=e,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout)


def one_line(p: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("convcost: error:")]
    assert len(lines) == 1 and needle in lines[0], p.stderr


# --------------------------------------------------------------------------- untrusted files


HOSTILE_PT2 = ["expr_injection", "guard_injection", "target_torch_save", "range_key_injection",
               "aoti_payload", "dotdot_member", "name_injection", "expr_power_tower",
               "zero_byte_weight_16g", "stack_trace_cr", "int_beyond_int64", "deep_json",
               "bad_crc", "encrypted_member", "unknown_compression"]


@pytest.mark.parametrize("name", HOSTILE_PT2)
def test_hostile_pt2_runs_no_code(tmp_path, name):
    before = {p.name for p in Path("/tmp").glob("aotinductor_*")}
    p = convcost("analyze", "--no-time", str(PT2 / f"{name}.pt2"), cwd=tmp_path)
    one_line(p, 3, str(PT2 / f"{name}.pt2"))
    assert not (tmp_path / "MARKER_pt2_code_ran").exists()
    assert {p.name for p in Path("/tmp").glob("aotinductor_*")} == before  # nothing unpacked


def test_pt2_generator_still_makes_hostile_archives(tmp_path):
    """The generator rebuilds the corpus from a fresh export of this torch; each archive is
    still refused in-process (exit 3, one line), and the name injection is real: torch's own
    loader writes the parameter's name into generated Python."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("make_pt2", PT2 / "make.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    make.main(tmp_path)
    for name in HOSTILE_PT2:
        r = CliRunner().invoke(cli, ["analyze", "--no-time", str(tmp_path / f"{name}.pt2")])
        assert r.exit_code == 3, (name, r.output)
        assert "Traceback" not in r.output
    ep = torch.export.load(str(tmp_path / "name_injection.pt2"))
    assert '__import__("os")' in ep.module().code  # what the guard keeps from running


def test_genuine_pt2_still_loads():
    p = convcost("analyze", "--no-time", str(PT2 / "genuine.pt2"), "-f", "json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["totals"]["params"] == 3 * 4 * 9 + 4


# --------------------------------------------------------------------------- model code in a child

HOSTILE = {
    "sysexit.py": "import sys\nsys.exit(0)\n",
    "osexit.py": "import os\nos._exit(0)\n",
    "abort.py": "import os\nos.abort()\n",
    "segv.py": "import ctypes\nctypes.string_at(0)\n",
}
NETS = """
import time
import torch
from torch import nn
print("hello from import")

class Chatty(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        print("hello from forward")
        return self.c(x)

class Hang(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        while True:
            time.sleep(0.5)

class Name_with_markup(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module("conv[/]", nn.Conv2d(3, 4, 3))

    def forward(self, x):
        return getattr(self, "conv[/]")(x)

class Ünïcode(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.c(x)
"""


@pytest.fixture
def models(tmp_path):
    for name, text in HOSTILE.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "nets.py").write_text(NETS)
    return tmp_path


@pytest.mark.parametrize("name,needle", [
    ("sysexit.py", "called sys.exit(0) while loading the model"),
    ("osexit.py", "ended the process while loading the model (exit code 0 without a result)"),
    ("abort.py", "killed by signal SIGABRT"),
    ("segv.py", "killed by signal SIGSEGV"),
])
def test_model_code_cannot_fake_a_result(models, name, needle):
    p = convcost("analyze", "--no-time", f"{models / name}:Net")
    one_line(p, 3, needle)
    assert p.stdout == ""


def test_prints_go_to_stderr_never_into_the_report(models):
    p = convcost("analyze", "--no-time", f"{models}/nets.py:Chatty", "--input-shape", "1,3,8,8",
                 "-f", "json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["totals"]["params"] == 112
    assert "hello from import" in p.stderr and "hello from forward" in p.stderr


def test_endless_forward_ends_with_the_timeout(models):
    p = convcost("analyze", "--no-time", f"{models}/nets.py:Hang", "--input-shape", "1,3,8,8",
                 "--timeout", "3")
    one_line(p, 3, "did not finish counting the model within 3.0 s")


def test_spawn_isolation_gives_the_same_report(models, monkeypatch):
    """Library use (and any process that already ran torch code) isolates with spawn: the jobs
    and their results cross a pipe pickled."""
    args = ["analyze", "--no-time", f"{EXAMPLES}/models.py:TinyNet", "--input-shape",
            "1,3,32,32", "-f", "json"]
    monkeypatch.setenv("CONVCOST_ISOLATION", "spawn")
    spawned = CliRunner().invoke(cli, args)
    assert spawned.exit_code == 0, spawned.output
    monkeypatch.setenv("CONVCOST_ISOLATION", "off")
    inproc = CliRunner().invoke(cli, args)
    a, b = json.loads(spawned.stdout), json.loads(inproc.stdout)
    assert a["totals"] == b["totals"] and a["layers"] == b["layers"]


def test_markup_and_non_ascii_names_print_as_text(models):
    p = convcost("analyze", "--no-time", f"{models}/nets.py:Name_with_markup", "--input-shape",
                 "1,3,8,8")
    assert p.returncode == 0, p.stderr
    assert "conv[/]" in p.stdout
    p = convcost("analyze", "--no-time", f"{models}/nets.py:Ünïcode", "--input-shape",
                 "1,3,8,8", env={"PYTHONIOENCODING": "ascii"})
    assert p.returncode == 0, p.stderr
    assert "\\xdcn\\xefcode" in p.stdout or "Unicode" in p.stdout


# --------------------------------------------------------------------------- budgets keep going


def test_budget_keeps_earlier_results_when_a_later_model_exits(models, tmp_path):
    b = tmp_path / "b.yaml"
    b.write_text(f"version: 1\ndefaults: {{input: [1, 3, 32, 32]}}\nchecks:\n"
                 f"  - {{name: over, model: {EXAMPLES}/tiny.yaml, limits: {{params: '1k'}}}}\n"
                 f"  - {{name: quitter, model: '{models}/sysexit.py:Net', limits: {{params: '1M'}}}}\n"
                 f"  - {{name: tinynet, model: '{EXAMPLES}/models.py:TinyNet', "
                 "limits: {params: '1M'}}\n")
    out, junit = tmp_path / "r.json", tmp_path / "j.xml"
    p = convcost("check", str(b), "-o", str(out), "--junit", str(junit))
    assert p.returncode == 3, p.stderr  # a model that cannot be measured outranks a failure
    d = json.loads(out.read_text())
    assert d["passed"] is False and d["exit_status"] == 3
    verdicts = {r["check"]: r["verdict"] for r in d["results"]}
    assert verdicts == {"over": "fail", "quitter": "error", "tinynet": "pass"}
    assert 'errors="1"' in junit.read_text() and 'failures="1"' in junit.read_text()
    assert "called sys.exit(0)" in p.stderr


# --------------------------------------------------------------------------- atomic outputs


def test_full_disk_leaves_the_old_baseline_intact(tmp_path):
    b = tmp_path / "b.yaml"  # ten checks: their baseline is larger than the 1 KB file limit
    b.write_text("version: 1\nchecks:\n" + "".join(
        f"  - {{name: tiny{i}, model: {EXAMPLES}/tiny.yaml, regression: {{params: {{error: "
        "'+1%'}}}\n" for i in range(10)))
    base = tmp_path / ".convcost" / "baseline.json"
    base.parent.mkdir()
    old = {"schema_version": 1, "checks": {"tiny": {"params": 1, "macs": 2}}}
    base.write_text(json.dumps(old))
    e = {k: v for k, v in os.environ.items() if k != "CONVCOST_ISOLATION"}
    e["PYTHONPATH"] = str(ROOT)
    p = subprocess.run(["bash", "-c", f"ulimit -f 1; exec {sys.executable} -m convcost check "
                        f"--no-time --update-baseline {b}"], env=e, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2 and "cannot write the baseline" in p.stderr, p.stderr
    assert json.loads(base.read_text()) == old  # untouched, still valid
    assert not list(base.parent.glob(".baseline.json.*"))  # no temporary file left behind


WRITER = """
import json, sys
from convcost.files import atomic_write_text
for i in range(300):
    atomic_write_text(sys.argv[1], json.dumps({"writer": sys.argv[2], "i": i, "pad": "x" * 5000}))
"""


def test_concurrent_writers_never_show_a_reader_half_a_file(tmp_path):
    target = tmp_path / "baseline.json"
    target.write_text(json.dumps({"writer": "none", "i": -1}))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(target), w], env=env)
             for w in "ab"]
    bad, reads = [], 0
    while any(p.poll() is None for p in procs):
        try:
            json.loads(target.read_text())
            reads += 1
        except ValueError as e:
            bad.append(str(e))
    assert all(p.wait(60) == 0 for p in procs)
    assert not bad and reads > 0
    assert json.loads(target.read_text())["i"] == 299


def test_two_concurrent_update_baseline_runs(tmp_path):
    b = tmp_path / "b.yaml"
    b.write_text(f"version: 1\nchecks:\n  - {{name: tiny, model: {EXAMPLES}/tiny.yaml, "
                 "limits: {params: '1M'}}\n")
    e = {k: v for k, v in os.environ.items() if k != "CONVCOST_ISOLATION"}
    e["PYTHONPATH"] = str(ROOT)
    procs = [subprocess.Popen([sys.executable, "-m", "convcost", "check", "--no-time",
                               "--update-baseline", str(b)], env=e, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]
    base = tmp_path / ".convcost" / "baseline.json"
    bad = []
    while any(p.poll() is None for p in procs):
        if base.exists():
            try:
                json.loads(base.read_text())
            except ValueError as err:
                bad.append(str(err))
    assert [p.wait(120) for p in procs] == [0, 0] and not bad
    assert json.loads(base.read_text())["checks"]["tiny"]["params"] == 13450


# --------------------------------------------------------------------------- signals and pipes


def test_sigterm_keeps_finished_rows_and_exits_143(tmp_path):
    marker = tmp_path / "timing-started"
    out = tmp_path / "partial.json"
    e = {k: v for k, v in os.environ.items() if k != "CONVCOST_ISOLATION"}
    e.update(PYTHONPATH=str(ROOT), CONVCOST_TEST_MARKER=str(marker))
    p = subprocess.Popen([sys.executable, "-m", "convcost", "compare",
                          f"{ROOT}/tests/fixtures/faulty.py:SlowNet", "--input-shape", "1,4,8,8",
                          "--groups", "2", "--variants", "grouped", "--max-time", "3",
                          "-f", "json", "-o", str(out)], env=e, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)
    try:
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), p.stderr.read() if p.poll() is not None else "no marker"
        time.sleep(0.3)
        p.send_signal(signal.SIGTERM)
        _, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 143, stderr
    assert "terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    d = json.loads(out.read_text())
    assert d["timing"]["interrupted"] is True
    fast = next(x for x in d["layers"] if x["name"] == "fast")
    assert fast["baseline"]["latency_ms"] > 0
    # every row that was not measured is listed, not only the one under way
    assert set(d["timing"]["missing"]) >= {"noisy original", "noisy grouped g=2",
                                           "(model) original", "(model) grouped g=2"}


def test_broken_pipe_exits_quietly():
    """The reader is gone before convcost writes (`| true` reads nothing and exits at once,
    while convcost is still importing torch): the write fails with EPIPE."""
    e = {k: v for k, v in os.environ.items() if k != "CONVCOST_ISOLATION"}
    e["PYTHONPATH"] = str(ROOT)
    for fmt in ("table", "json"):
        p = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m convcost "
                            f"analyze --no-time -f {fmt} {EXAMPLES}/tiny.yaml | true"], env=e,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 141, (fmt, p.stderr)
        assert p.stderr == ""


def test_full_stdout_is_one_line_exit_2():
    with open("/dev/full", "w") as full:
        p = convcost("analyze", "--no-time", f"{EXAMPLES}/tiny.yaml", stdout=full)
    one_line(p, 2, "cannot write the report to standard output: No space left on device")


# --------------------------------------------------------------------------- reads that never hang


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    result = {}

    def run() -> None:
        result["r"] = CliRunner().invoke(cli, ["analyze", "--no-time", str(fifo)])

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():  # unblock the reader so the test process can finish, then fail
        with open(fifo, "w") as f:
            f.write("x")
        pytest.fail("reading a FIFO blocked")
    r = result["r"]
    assert r.exit_code == 2 and "is a FIFO (named pipe), expected a spec file" in r.stderr


def test_dev_zero_is_refused(tmp_path):
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    r = CliRunner().invoke(cli, ["analyze", "--no-time", str(link)])
    assert r.exit_code == 2 and "is a device, expected a spec file" in r.stderr
    b = tmp_path / "b.yaml"
    b.symlink_to("/dev/zero")
    r = CliRunner().invoke(cli, ["check", str(b)])
    assert r.exit_code == 2 and "is a device" in r.stderr


# --------------------------------------------------------------------------- an unusable cache


def test_unusable_cache_is_a_notice_and_results_are_printed(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    env = {"CONVCOST_CACHE_DIR": str(blocker / "cache")}
    p = convcost("calibrate", "--quick", env=env)
    assert p.returncode == 0, p.stderr
    assert "cannot be used" in p.stderr and "GEMM fp32" in p.stdout and "not cached" in p.stdout
    p = convcost("compare", "--in", "8", "--out", "8", "--size", "8", "--batch", "1",
                 "--groups", "2", "--max-time", "0.05", "-f", "json", env=env)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["variants"][0]["latency_ms"] > 0 and "cannot be used" in d["timing"]["notices"][0]


def test_relative_xdg_cache_home_is_ignored(monkeypatch, tmp_path):
    from convcost.paths import cache_dir

    monkeypatch.delenv("CONVCOST_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert cache_dir() == tmp_path / ".cache" / "convcost"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "convcost"
