"""The README cannot drift: every console block is rerun (without timing) and every counted
figure it shows must be the tool's (tools/readme_blocks.py; `--write` regenerates the blocks)."""

from __future__ import annotations

import importlib.util
import sys

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("readme_blocks", ROOT / "tools" / "readme_blocks.py")
readme_blocks = importlib.util.module_from_spec(_spec)
sys.modules["readme_blocks"] = readme_blocks  # dataclasses look their module up
_spec.loader.exec_module(readme_blocks)


def test_readme_console_blocks_match_the_tool():
    blocks = readme_blocks.parse(readme_blocks.README.read_text(encoding="utf-8"))
    assert len(blocks) >= 5 and sum(len(b.commands) for b in blocks) >= 6
    problems = readme_blocks.check()
    assert problems == [], "\n".join(problems)


def test_the_check_catches_a_drifted_figure():
    text = readme_blocks.README.read_text(encoding="utf-8")
    # the ResNet-50 whole-model table: change one counted figure and one timed block's figure
    drifted = text.replace("x0.564", "x0.600", 1).replace("1.15k    116M", "1.15k    117M", 1)
    assert drifted != text
    problems = readme_blocks.check(drifted)
    assert any("x0.600" in p or "output differs" in p for p in problems), problems
    assert any("'117M'" in p for p in problems), problems


def test_table_parsing_keeps_empty_cells_in_their_column():
    out = ("title\n\n  variant      params   formula   latency\n ─────────────────────────────\n"
           "  original      36.9k             30.1 ms\n  grouped g=2   18.4k   1/g       15.4 ms\n")
    (t,) = readme_blocks.tables(out)
    assert t.columns == ["variant", "params", "formula", "latency"]
    assert t.rows[0] == {"variant": "original", "params": "36.9k", "formula": "", "latency": "30.1 ms"}
    assert t.rows[1]["formula"] == "1/g"
