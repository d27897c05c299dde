"""Hardening, round three (issue 20): input values that used to end in exit 70, damaged or
hostile archives (the .pt2 corpus is in test_hardening.py), processes that must die with
convcost, the latency table, and gates that must not pass on what they did not measure."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from convcost.cli import cli
from tests.conftest import EXAMPLES

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
                         env=_env(pids), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
                         text=True)
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
