"""Baselines: the figures of a passing run, stored as JSON, that regression limits compare
against (``convcost check --update-baseline`` writes them)."""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

from convcost import __version__
from convcost.errors import BudgetFileError, InputError


def load_baseline(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    from convcost.files import read_bounded

    try:
        data = json.loads(read_bounded(path, 64 * 1024 * 1024, "baseline").decode("utf-8"))
    except RecursionError as e:
        raise BudgetFileError(f"{path}: baseline is JSON nested too deep; rewrite it with "
                              "convcost check --update-baseline") from e
    except (OSError, ValueError) as e:
        raise BudgetFileError(f"{path}: baseline is not valid JSON ({e}); rewrite it with "
                              "convcost check --update-baseline") from e
    if not isinstance(data, dict) or not isinstance(data.get("checks"), dict):
        raise BudgetFileError(f"{path}: not a convcost baseline (no 'checks'); rewrite it with "
                              "convcost check --update-baseline")
    for name, metrics in data["checks"].items():
        if not isinstance(metrics, dict):
            raise BudgetFileError(f"{path}: checks.{name} is not a mapping of metrics; rewrite "
                                  "the baseline with convcost check --update-baseline")
        for key in ("params", "macs", "paper_macs", "flops", "latency_ms"):
            v = metrics.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not math.isfinite(v) or v < 0):
                raise BudgetFileError(f"{path}: checks.{name}.{key} is {v!r}, not a count; "
                                      "rewrite the baseline with convcost check "
                                      "--update-baseline")
    return data


def baseline_document(report: Any) -> dict[str, Any]:
    return {"schema_version": 1, "tool": f"convcost {__version__}",
            "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "checks": report.metrics}




def baseline_path(budget_path: Path, named: Path | None, in_file: Path | None) -> Path:
    """Where a baseline is read and written: ``--baseline``, else the budget's ``baseline:``,
    else ``.convcost/baseline.json`` beside the budget file."""
    return named or in_file or budget_path.parent / ".convcost" / "baseline.json"


def write_baseline(target: Path, document: dict[str, Any]) -> None:
    """Write the baseline atomically; its folder (convcost's own, ``.convcost`` by default) is
    made if needed."""
    from convcost.files import atomic_write_text
    from convcost.report.common import json_text

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{target.parent}: cannot create the baseline's folder: "
                         f"{e.strerror or e}") from e
    atomic_write_text(target, json_text(document) + "\n", "baseline")
