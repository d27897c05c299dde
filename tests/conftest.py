from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property and fuzz tests are derandomized by default (a fixed seed per test, no example
# database): CI never fails at random. `pytest --hypothesis-profile=fuzz` (or
# benchmarks/fuzz.py) explores new random inputs; a failure found there becomes a fixed bug
# plus a corpus case in tests/bad_inputs/.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("fuzz", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("CONVCOST_HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="Rewrite tests/golden/* from the current rendering.")


@pytest.fixture
def golden(request: pytest.FixtureRequest):
    """Compare text with tests/golden/NAME; `pytest --update-golden` rewrites the files."""
    update = request.config.getoption("--update-golden") or os.environ.get("CONVCOST_UPDATE_GOLDEN")

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update or not path.exists():
            if not update:
                pytest.fail(f"golden file {path} is missing; run pytest --update-golden")
            path.write_text(text, encoding="utf-8")
            return
        expected = path.read_text(encoding="utf-8")
        assert text == expected, f"{name} differs from the golden file; if the change is " \
                                 "intended, run pytest --update-golden and review the diff"

    return check


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write YAML text to a temporary spec file and return its path."""
    def _write(text: str, name: str = "spec.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        return p
    return _write


@pytest.fixture(autouse=True)
def in_process_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test process runs torch code all the time, so forking it is unsafe (GNU OpenMP);
    tests run model code in-process unless they set CONVCOST_ISOLATION themselves. The fork
    path is tested through real `python -m convcost` processes, spawn through CliRunner."""
    monkeypatch.setenv("CONVCOST_ISOLATION", "off")


@pytest.fixture(autouse=True)
def generous_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timed commands get a time budget no loaded machine runs out of (the default, 40 s, can
    be spent by a few kernels beside two busy processes); tests of the budget itself give
    --time-budget explicitly, which wins. Subprocesses inherit it."""
    monkeypatch.setenv("CONVCOST_TIME_BUDGET", "600")


@pytest.fixture(autouse=True)
def busy_figures_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Figures measured while the machine is busy are quoted and stored (still marked): the
    suite's timed tests check timing, caching and budgets, and must pass beside busy processes.
    The busy-machine tests (tests/test_busy.py) remove it. Subprocesses inherit it."""
    monkeypatch.setenv("CONVCOST_ON_BUSY", "accept")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own cache directory (latency table, peaks): no test reuses another's
    measurements and the user's ~/.cache is never touched. Subprocesses inherit it."""
    d = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CONVCOST_CACHE_DIR", str(d))
    return d


def stored_row(key: str, label: str = "Conv2d(8, 8, kernel_size=(3, 3))", median: float = 1.0,
               **changes: object) -> dict:
    """A complete, valid latency-table row (tests that fill the table directly)."""
    row = {"key": key, "label": label, "scope": "layer", "signature": "sig", "in_shapes": [[1, 8, 8, 8]],
           "dtype": "fp32", "memory_format": "contiguous", "backend": "eager", "cold": False,
           "device": "cpu", "device_name": "test cpu", "torch": "2.13.0", "threads": 2,
           "macs": 1000, "median_ms": median, "q1_ms": median * 0.9, "q3_ms": median * 1.1,
           "min_ms": median * 0.8, "max_ms": median * 1.2, "n": 20, "calls_per_sample": 1,
           "converged": True, "graph_median_ms": None,
           "measured_at": "2026-11-23T00:00:00+00:00", "convcost": "0.1.0"}
    row.update(changes)
    return row


def default_signals() -> None:
    """``preexec_fn`` for a convcost subprocess that a test signals: SIGINT and SIGTERM at
    their defaults, whatever the test runner inherited (a background job of a non-interactive
    shell starts with SIGINT ignored, and Python keeps an inherited SIG_IGN)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
