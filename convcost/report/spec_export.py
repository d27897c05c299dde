"""Write a model's conv inventory as a spec of independent layers (``--export-spec``).

Each Conv2d becomes a top-level layer with its own ``input: [C, H, W]``, so ``analyze`` and
``compare`` can work on a traced model's convs without its code. The round trip keeps the conv
params and MACs (for convs called once; a shared conv is written once, with a comment).
"""

from __future__ import annotations

import re

import yaml

from convcost.counting.analysis import AnalysisReport, LayerRow


def _spec_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_\-]", "_", name) or "conv"
    if not re.match(r"[A-Za-z_]", base):
        base = f"m_{base}"
    if re.fullmatch(r"branch\d+|shortcut", base):
        base = f"{base}_"
    out, i = base, 2
    while out in taken:
        out, i = f"{base}_{i}", i + 1
    taken.add(out)
    return out


def _one(v: list[int]) -> int | list[int]:
    return v[0] if len(set(v)) == 1 else list(v)


def _conv_entry(row: LayerRow, name: str) -> dict:
    assert row.in_shape is not None and row.out_shape is not None and row.kernel is not None
    cin = row.in_shape[1]
    cout = row.out_shape[1]
    conv = {"in": cin, "out": cout, "kernel": _one(row.kernel), "stride": _one(row.stride or [1]),
            "padding": _one(row.padding) if row.padding is not None else "same",
            "dilation": _one(row.dilation or [1]), "groups": row.groups or 1,
            "bias": bool(row.bias)}
    return {"name": name, "input": list(row.in_shape[1:]), "conv": conv}


def export_spec_yaml(report: AnalysisReport) -> tuple[str, list[str]]:
    """(YAML text, notes about convs that could not be written) for the report's Conv2d rows."""
    taken: set[str] = set()
    layers, notes = [], []
    batch = None
    for row in report.layers:
        if row.op != "conv":
            continue
        if row.in_shape is None or len(row.in_shape) != 4 or not row.kernel or len(row.kernel) != 2:
            notes.append(f"{row.name}: only Conv2d layers can be written to a spec; skipped")
            continue
        if row.padding is None:
            notes.append(f"{row.name}: padding given as a string in the model; written as 'same'")
        if row.calls > 1:
            notes.append(f"{row.name}: called {row.calls} times; written once")
        batch = batch or row.in_shape[0]
        layers.append(_conv_entry(row, _spec_name(row.name, taken)))
    doc = {"name": f"{report.name}_convs", "batch": batch or 1, "layers": layers}
    header = (f"# Conv inventory of {report.source}, written by convcost --export-spec.\n"
              f"# Each layer is independent (its own input); names are the model's module names.\n")
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120)
    return header + body, notes
