"""doctor's report: what the machine looks like before timing, and what to change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from convcost.report.common import json_text

if TYPE_CHECKING:
    from convcost.timing.machine import Finding

MARK = {"ok": "ok  ", "warn": "WARN", "info": "info"}


def render_doctor(findings: Sequence[Finding], fmt: str) -> str:
    """One line per finding, its advice indented below it; or JSON."""
    warned = sum(f.status == "warn" for f in findings)
    if fmt == "json":
        return json_text({"findings": [f.to_dict() for f in findings], "warnings": warned}) + "\n"
    lines = []
    for f in findings:
        lines.append(f"{MARK.get(f.status, f.status)}  {f.name}: {f.state}")
        if f.advice:
            lines.append(f"      -> {f.advice}")
    lines.append(f"{warned} warning(s)" + ("; timing now gives figures that move or are marked "
                                           "busy" if warned else "; nothing in the way of timing"))
    return "\n".join(lines) + "\n"
