"""Plan files: what `convcost plan -o plan.yaml` writes and `analyze --apply` / `compare
--apply` read: each selected conv's choice, the budget, the device it was planned on.

A plan file is untrusted input: every layer name must be a dotted path of identifiers (it is
only ever looked up among the model's modules, never evaluated), every variant a catalogue
name, every group count a bounded integer; anything else is one line naming the file, line and
key (exit 2). A name that is not a conv of the model, or a variant that cannot keep the layer's
shapes, is one line too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convcost.errors import InputError
from convcost.sources.lines import FileValidator
from convcost.variants.catalogue import GROUPED_VARIANTS, VARIANTS

PLAN_VERSION = 1
KEEP = "keep"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
MAX_GROUPS = 1 << 16
MAX_LAYERS = 100_000


@dataclass(frozen=True)
class Choice:
    layer: str
    variant: str  # a catalogue name, or "keep"
    groups: int | None = None

    @property
    def label(self) -> str:
        if self.variant == KEEP:
            return KEEP
        return f"{self.variant} g={self.groups}" if self.groups else self.variant


@dataclass(frozen=True)
class PlanFile:
    source: str
    choices: tuple[Choice, ...]
    objective: str = ""
    limits: tuple[tuple[str, str], ...] = ()
    device: str = ""
    backend: str = ""

    @property
    def substituted(self) -> tuple[Choice, ...]:
        return tuple(c for c in self.choices if c.variant != KEEP)


def plan_file_of(report: Any) -> PlanFile:
    """The best plan of a :class:`~convcost.plan.result.PlanReport` as a plan file."""
    from convcost.timing.device import fingerprint_line

    choices = tuple(Choice(name, c.variant or KEEP,
                           c.groups if c.variant in GROUPED_VARIANTS else None)
                    for name, _, _, c in report.chosen(report.best))
    return PlanFile(report.source, choices, report.objective,
                    tuple((x.metric, x.text) for x in report.limits),
                    fingerprint_line(report.device) if report.device else "",
                    ",".join(report.backends))


def plan_yaml(plan: PlanFile) -> str:
    """The plan as YAML text (names are identifiers; strings are quoted)."""
    import json

    q = json.dumps  # a JSON string is a valid YAML flow scalar
    lines = ["# convcost plan: apply with `convcost analyze --apply FILE SOURCE` or `convcost "
             "compare --apply FILE SOURCE`", f"convcost_plan: {PLAN_VERSION}",
             f"source: {q(plan.source)}", f"objective: {q(plan.objective)}",
             "limits: {" + ", ".join(f"{m}: {q(t)}" for m, t in plan.limits) + "}",
             f"device: {q(plan.device)}", f"backend: {q(plan.backend)}", "layers:"]
    for c in plan.choices:
        g = f", groups: {c.groups}" if c.groups else ""
        lines.append(f"  - {{name: {q(c.layer)}, variant: {q(c.variant)}{g}}}")
    return "\n".join(lines) + "\n"


class _PlanValidator(FileValidator):
    def err(self, msg: str, node: Any = None, key: Any = None) -> InputError:
        line = self.line(node, key)
        return InputError(f"{self.file}{f':{line}' if line else ''}: {msg}")


def _choice(v: _PlanValidator, raw: Any, i: int) -> Choice:
    where = f"layers[{i}]"
    if not isinstance(raw, dict):
        raise v.err(f"{where} must be a mapping {{name, variant, groups}}", raw)
    k = v.unknown_key(raw, ("name", "variant", "groups"))
    if k is not None:
        raise v.err(f"{where}: unknown key {str(k)[:40]!r}; allowed: name, variant, groups",
                    raw, k)
    name, variant, groups = raw.get("name"), raw.get("variant"), raw.get("groups")
    if not isinstance(name, str) or len(name) > 1000 or not _NAME.match(name):
        raise v.err(f"{where}.name {str(name)[:60]!r} is not a module path (dotted "
                    "identifiers, e.g. layer1.0.conv2)", raw, "name")
    if variant != KEEP and variant not in VARIANTS:
        raise v.err(f"{where}.variant {str(variant)[:40]!r}; use keep or one of "
                    f"{', '.join(VARIANTS)}", raw, "variant")
    if variant in GROUPED_VARIANTS:
        if isinstance(groups, bool) or not isinstance(groups, int) or not 2 <= groups <= MAX_GROUPS:
            raise v.err(f"{where}.groups {str(groups)[:40]!r}: {variant} needs an integer "
                        f"from 2 to {MAX_GROUPS}", raw, "groups")
    elif groups is not None and not (variant == "dense" and groups == 1):
        raise v.err(f"{where}.groups: {variant} takes no group count", raw, "groups")
    return Choice(name, variant, groups if variant in GROUPED_VARIANTS else None)


def read_plan(path: str | Path) -> PlanFile:
    """Read and validate a plan file (InputError, exit 2, naming the file, line and key)."""
    from convcost.sources.yamlio import load_yaml_file

    v = _PlanValidator(path)
    data = load_yaml_file(path, "plan file")
    if not isinstance(data, dict):
        raise v.err("must be a mapping (convcost_plan, source, layers, ...)")
    k = v.unknown_key(data, ("convcost_plan", "source", "objective", "limits", "device",
                             "backend", "layers"))
    if k is not None:
        raise v.err(f"unknown key {str(k)[:40]!r}", data, k)
    if data.get("convcost_plan") != PLAN_VERSION:
        raise v.err(f"'convcost_plan' must be {PLAN_VERSION} (a file `convcost plan -o` "
                    "wrote)", data, "convcost_plan" if "convcost_plan" in data else None)
    layers = data.get("layers")
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise v.err(f"'layers' must be a list of at most {MAX_LAYERS} entries", data, "layers")
    choices = tuple(_choice(v, raw, i) for i, raw in enumerate(layers))
    names = [c.layer for c in choices]
    dup = next((n for n in names if names.count(n) > 1), None) if len(names) < 5000 else None
    if dup is not None:
        raise v.err(f"layer {dup!r} is listed twice", data, "layers")
    limits = data.get("limits") or {}
    return PlanFile(str(data.get("source") or ""), choices, str(data.get("objective") or ""),
                    tuple((str(m), str(t)) for m, t in limits.items())
                    if isinstance(limits, dict) else (), str(data.get("device") or ""),
                    str(data.get("backend") or ""))


def apply_plan(model: Any, input_shapes: Any, plan: PlanFile,
               path: str | Path) -> tuple[Any, list[str]]:
    """``model`` with the plan's variants substituted (the original is left as it is; the
    layers kept share its weights), and a note. Every named layer must be a Conv1d/2d/3d that
    the forward calls, and every variant must keep its shapes (InputError otherwise)."""
    from torch import nn

    from convcost.counting.analysis import analyze_model
    from convcost.variants.catalogue import ConvLayer, Skip, Variant, build
    from convcost.variants.compare import with_replacements

    modules = dict(model.named_modules())
    todo = plan.substituted
    rows = {r.name: r for r in analyze_model(model, input_shapes, source=str(path),
                                             name="plan", pass_costs=False).layers} \
        if todo else {}
    new = {}
    for c in todo:
        m = modules.get(c.layer)
        if not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            what = "no such module" if m is None else f"a {type(m).__name__}, not a conv"
            raise InputError(f"{path}: layer {c.layer!r}: {what} in this model")
        r = rows.get(c.layer)
        if r is None or r.in_shape is None:
            raise InputError(f"{path}: layer {c.layer!r} is not called by the forward")
        try:
            new[c.layer] = build(ConvLayer.from_module(m, r.in_shape),
                                 Variant(c.variant, c.groups)).eval()
        except Skip as e:
            raise InputError(f"{path}: layer {c.layer!r} cannot become {c.label}: {e}") from e
    note = (f"plan {path} applied: {len(new)} conv(s) substituted "
            f"({', '.join(f'{c.layer} -> {c.label}' for c in todo[:4])}"
            f"{', ...' if len(todo) > 4 else ''})" if new else f"plan {path}: every layer kept")
    return with_replacements(model, new), [note]
