"""The bad-input corpus (tests/bad_inputs/) and a fuzzer: never a traceback, always exit 2 or 3
with one clear line; mutated valid inputs never crash the CLI."""

from __future__ import annotations

import copy
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convcost.cli import cli
from tests.conftest import EXAMPLES, ROOT

CORPUS = ROOT / "tests" / "bad_inputs"


def _manifest() -> list[tuple[str, int, str]]:
    out = []
    for line in (CORPUS / "manifest.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            f, code, needle = (x.strip() for x in line.split("|", 2))
            out.append((f, int(code), needle))
    return out


def _commands() -> list[tuple[int, str, list[str]]]:
    out = []
    for line in (CORPUS / "commands.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            code, needle, args = (x.strip() for x in line.split("|", 2))
            args = args.replace("{dir}", str(CORPUS)).replace("{examples}", str(EXAMPLES))
            out.append((int(code), needle, shlex.split(args)))
    return out


def assert_clean_failure(result, code: int, needle: str) -> None:
    out = result.output
    assert "Traceback" not in out, out
    assert result.exit_code == code, (result.exit_code, out)
    errors = [ln for ln in out.splitlines() if ln.startswith(("convcost: error:", "Error:"))]
    assert len(errors) == 1, out
    assert needle in errors[0], (needle, errors[0])


def test_corpus_is_large_enough():
    assert len(_manifest()) + len(_commands()) >= 40


@pytest.mark.parametrize("path,code,needle", _manifest(), ids=[m[0] for m in _manifest()])
def test_corpus_file(path, code, needle):
    cmd = ["check"] if path.startswith("budgets/") else ["analyze", "--no-time"]
    result = CliRunner().invoke(cli, [*cmd, str(CORPUS / path)])
    assert_clean_failure(result, code, needle)


@pytest.mark.parametrize("code,needle,args", _commands(), ids=[" ".join(c[2])[:60] for c in _commands()])
def test_corpus_command(code, needle, args):
    assert_clean_failure(CliRunner().invoke(cli, args), code, needle)


def test_corpus_in_a_real_process():
    """Exit codes and stderr as a shell sees them (not only through CliRunner)."""
    for path in ("specs/90_not_utf8.yaml", "specs/42_alias_bomb.yaml"):
        p = subprocess.run([sys.executable, "-m", "convcost", "analyze", "--no-time",
                            str(CORPUS / path)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and p.stdout == ""


# --------------------------------------------------------------------------- fuzzing

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10), st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.integers(-3, 300), max_size=4), st.dictionaries(st.text(max_size=6),
                                                                st.integers(0, 9), max_size=2),
    st.sampled_from(["same", "valid", "relu", "max", "avg", "25M", "+5%", "12 ms", "cuda"]),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated(draw, doc):
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add_key"]))
        if action == "replace":
            parent[path[-1]] = draw(JUNK)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(JUNK)
    return doc


SPECS = {p.name: yaml.safe_load(p.read_text()) for p in EXAMPLES.glob("*.yaml")
         if p.name not in ("budget.yaml", "mobilenet_v1.yaml")}
BUDGET = yaml.safe_load((EXAMPLES / "budget.yaml").read_text())
for c in BUDGET["checks"]:
    c["model"] = str(EXAMPLES / c["model"])


SPEC_EXAMPLES = int(os.environ.get("CONVCOST_FUZZ_EXAMPLES", "120"))
BUDGET_EXAMPLES = max(1, SPEC_EXAMPLES // 2)


@settings(max_examples=SPEC_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from(sorted(SPECS)).flatmap(lambda n: mutated(SPECS[n])))
def test_fuzzed_specs_never_crash(tmp_path_factory, doc):
    path = Path(tmp_path_factory.mktemp("fz")) / "spec.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    r = CliRunner().invoke(cli, ["analyze", "--no-time", "-f", "json", str(path)])
    assert "Traceback" not in r.output, r.output
    assert r.exit_code in (0, 2, 3), (r.exit_code, r.output)
    if r.exit_code:
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@settings(max_examples=BUDGET_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated(BUDGET))
def test_fuzzed_budgets_never_crash(tmp_path_factory, doc):
    path = Path(tmp_path_factory.mktemp("fzb")) / "budget.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    r = CliRunner().invoke(cli, ["check", "--no-time", str(path)])
    assert "Traceback" not in r.output, r.output
    assert r.exit_code in (0, 1, 2, 3), (r.exit_code, r.output)
    if r.exit_code in (2, 3):
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
