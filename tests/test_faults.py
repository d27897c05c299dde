"""Fault survival and safety: faults keep finished rows; convcost writes only where pointed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from convcost.cli import cli
from tests.conftest import EXAMPLES, ROOT

FAULTY = ROOT / "tests" / "fixtures" / "faulty.py"


def test_out_of_memory_mid_timing_keeps_the_other_rows(tmp_path):
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["analyze", f"{FAULTY}:OomNet", "--input-shape", "1,3,16,16",
                                 "--max-time", "0.05", "-f", "json", "-o", str(out)])
    assert r.exit_code == 4, r.output
    d = json.loads(out.read_text())
    rows = {x["name"]: x for x in d["layers"]}
    assert rows["ok"]["latency_ms"] > 0
    assert rows["oom"]["latency_ms"] is None
    failures = " ".join(d["timing"]["failures"])
    assert "out of memory" in failures
    assert d["totals"]["macs"] == 16 * 16 * 9 * 3 * 8 + 16 * 16 * 9 * 8 * 8  # counts unaffected


def test_incomplete_table_names_the_failure():
    r = CliRunner().invoke(cli, ["analyze", f"{FAULTY}:OomNet", "--input-shape", "1,3,16,16",
                                 "--max-time", "0.05"])
    assert r.exit_code == 4
    assert "error: failed: oom: out of memory" in r.stdout
    assert "incomplete: " in r.stderr and "Traceback" not in r.output


def test_writes_only_where_pointed(tmp_path):
    """Run a model from a read-only-looking work folder with every output option; afterwards
    the only new files are the outputs named and convcost's cache directory."""
    work = tmp_path / "work"
    home = tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / "net.py").write_text((EXAMPLES / "models.py").read_text())
    # bytecode writing on (as on a user's machine), so a stray __pycache__ would show up
    env = {k: v for k, v in os.environ.items() if k not in (
        "XDG_CACHE_HOME", "MPLCONFIGDIR", "CONVCOST_CACHE_DIR", "PYTHONDONTWRITEBYTECODE")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    outdir = tmp_path / "out"
    outdir.mkdir()
    cmds = [
        ["analyze", "net.py:TinyNet", "--input-shape", "1,3,32,32", "--max-time", "0.02",
         "-f", "json", "-o", str(outdir / "a.json"), "--export-spec", str(outdir / "s.yaml"),
         "--plot", str(outdir / "a.png")],
        ["compare", "net.py:TinyNet", "--input-shape", "1,3,32,32", "--groups", "2",
         "--max-time", "0.02", "-o", str(outdir / "c.txt")],
        ["calibrate", "--quick"],
    ]
    for c in cmds:
        p = subprocess.run([sys.executable, "-m", "convcost", *c], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
    created = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    allowed_prefixes = ("out/", "home/.cache/convcost/")
    unexpected = [f for f in created if not f.startswith(allowed_prefixes) and f != "work/net.py"]
    assert not unexpected, unexpected
    assert {"out/a.json", "out/s.yaml", "out/a.png", "out/c.txt"} <= set(created)
    assert "home/.cache/convcost/peaks.json" in created


def test_yaml_python_tags_are_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    spec = tmp_path / "evil.yaml"
    spec.write_text(f"input: !!python/object/apply:os.system ['touch {marker}']\n"
                    "layers: [{act: relu}]\n")
    r = CliRunner().invoke(cli, ["analyze", "--no-time", str(spec)])
    assert r.exit_code == 2 and not marker.exists()


def test_pickled_models_are_refused_without_reading(tmp_path):
    marker = tmp_path / "pwned"
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    pt = tmp_path / "model.pt"
    pt.write_bytes(pickle.dumps(Evil()))
    r = CliRunner().invoke(cli, ["analyze", "--no-time", str(pt)])
    assert r.exit_code == 3 and "not loaded" in r.stderr and not marker.exists()


def test_pt2_loading_never_unpickles_arbitrary_objects(tmp_path):
    """torch.export.load unpickles with weights_only=False; convcost forces tensors only."""
    import pickle

    import pytest
    import torch

    from convcost.sources.load import tensors_only_unpickling

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    blob = tmp_path / "evil.bin"
    torch.save({"w": torch.ones(2), "evil": Evil()}, blob)
    original = torch.load
    with tensors_only_unpickling(), pytest.raises(pickle.UnpicklingError):
        torch.load(blob, weights_only=False)  # what torch.export.load asks for
    assert not marker.exists()
    assert torch.load is original  # restored after the load
    from torch.export.pt2_archive import _package

    assert _package.pickle is pickle
