"""PNG plots (matplotlib, an optional extra: ``pip install 'convcost[plot]'``). Rendering only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convcost.errors import InputError
from convcost.report.compare import backend_names


def _plt() -> Any:
    import os

    from convcost.paths import cache_dir

    # matplotlib writes a font cache; keep it in convcost's cache, not in the user's home
    os.environ.setdefault("MPLCONFIGDIR", str(cache_dir() / "matplotlib"))
    try:
        import matplotlib
    except ImportError as e:
        raise InputError("--plot needs matplotlib: pip install 'convcost[plot]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_compare(report: Any, path: Path) -> Path:
    """Left: MAC ratio vs latency ratio per variant with the ideal y = x line (log-log).
    Right: median latency per variant (with IQR bars). Uses model rows for a SOURCE. With
    several backends, one series per backend in both panels."""
    plt = _plt()
    if report.is_model:
        base, rows, title = report.model_baseline, report.model_rows, f"{report.name}: whole model"
    else:
        lc = report.layers[0]
        base, rows, title = lc.baseline, lc.rows, report.name
    if not any(r.latency_ms for r in [base, *rows]):
        return _plot_counts(plt, [r for r in rows if not r.skipped], title, path)
    names = backend_names(report)  # [None] for one backend: the rows' first figures
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    allv: list[float] = []
    for b in names:
        pts = [r for r in rows if r.ratio_macs and r.on(b).ratio_latency]
        if not pts:
            continue
        xs = [r.ratio_macs for r in pts]
        ys = [r.on(b).ratio_latency for r in pts]
        allv += xs + ys
        ax1.scatter(xs, ys, zorder=3, label=b)
        for r, x, y in zip(pts, xs, ys, strict=True):
            ax1.annotate(r.label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if allv:
        lo = min([*allv, 1.0]) / 1.5
        hi = max([*allv, 1.0]) * 1.5
        ax1.plot([lo, hi], [lo, hi], "--", color="grey", label="ideal: latency follows MACs")
        ax1.axhline(1.0, color="lightgrey", lw=0.8)
        ax1.set_xscale("log")
        ax1.set_yscale("log")
        ax1.set_xlim(lo, hi)
        ax1.set_ylim(lo, hi)
        ax1.legend(fontsize=8, loc="upper left")
    else:
        ax1.text(0.5, 0.5, "no latency measured", ha="center", va="center")
    ax1.set_xlabel("MACs / baseline")
    ax1.set_ylabel("latency / baseline")
    ax1.set_title("counted MAC ratio vs measured latency ratio")
    bars = [base, *rows]
    width = 0.8 / len(names)
    for j, b in enumerate(names):
        vals = [r.on(b).latency_ms or 0.0 for r in bars]
        ms = [r.on(b).timing.measurement if r.on(b).timing is not None else None for r in bars]
        lo_e = [max(0.0, v - ((m.q1_ms if m else None) or v)) for v, m in zip(vals, ms, strict=True)]
        hi_e = [max(0.0, ((m.q3_ms if m else None) or v) - v) for v, m in zip(vals, ms, strict=True)]
        pos = [i + (j - (len(names) - 1) / 2) * width for i in range(len(bars))]
        colors = None if b is not None else ["tab:grey"] + ["tab:blue"] * (len(bars) - 1)
        ax2.bar(pos, vals, width=width, yerr=[lo_e, hi_e], capsize=3, color=colors, label=b)
    if names[0] is not None:
        ax2.legend(fontsize=8)
    ax2.set_xticks(range(len(bars)))
    ax2.set_xticklabels([r.label for r in bars], rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("median latency (ms), bars: IQR")
    ax2.set_title("latency per variant" + (" and backend" if names[0] is not None else ""))
    dev = (report.device or {}).get("name", "")
    head = f"convcost compare: {title}  [{dev}, {(report.device or {}).get('dtype', '')}]"
    fig.suptitle(head)
    fig.tight_layout()
    return _save(fig, plt, path, head)


def _plot_counts(plt: Any, rows: list[Any], title: str, path: Path) -> Path:
    """Without timing: each variant's counted params and MACs ratios next to the closed form."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.8))
    xs = range(len(rows))
    w = 0.27
    ax.bar([x - w for x in xs], [r.ratio_params or 0 for r in rows], w, label="params (counted)")
    ax.bar(list(xs), [r.ratio_macs or 0 for r in rows], w, label="MACs (counted)")
    ax.bar([x + w for x in xs], [r.analytic_macs or 0 for r in rows], w, label="closed form",
           color="lightgrey")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r.label for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ratio to the original (log)")
    ax.legend(fontsize=8)
    head = f"convcost compare: {title}\ncounted params and MAC ratios (not timed)"
    ax.set_title(head, fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path, head)


def plot_analysis(report: Any, path: Path) -> Path:
    """Per-layer latency vs MACs (log-log), one point per timed conv/linear layer; without
    timing, MACs and params of the 30 largest layers."""
    plt = _plt()
    if not any(r.latency_ms for r in report.layers):
        rows = sorted(report.layers, key=lambda r: -r.macs)[:30]
        fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(rows) + 2), 4.8))
        ax.bar(range(len(rows)), [r.macs for r in rows], label="MACs")
        ax2 = ax.twinx()
        ax2.plot(range(len(rows)), [r.params for r in rows], "o", color="tab:orange",
                 label="params")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r.name for r in rows], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("MACs")
        ax2.set_ylabel("params")
        head = (f"convcost analyze: {report.name}\nMACs and params of the largest layers "
                "(not timed)")
        ax.set_title(head, fontsize=10)
        fig.tight_layout()
        return _save(fig, plt, path, head)
    fig, ax = plt.subplots(figsize=(7, 5))
    pts = [r for r in report.layers if r.latency_ms and r.macs]
    kinds = sorted({r.kind or r.op for r in pts})
    for k in kinds:
        sel = [r for r in pts if (r.kind or r.op) == k]
        ax.scatter([r.macs for r in sel], [r.latency_ms for r in sel], label=k, zorder=3)
    if pts:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no latency measured", ha="center", va="center")
    ax.set_xlabel("MACs")
    ax.set_ylabel("median latency (ms)")
    head = f"convcost analyze: {report.name} ({(report.device or {}).get('name', '')})"
    ax.set_title(head)
    fig.tight_layout()
    return _save(fig, plt, path, head)


def plot_plan(report: Any, path: Path) -> Path:
    """The plans (the front with --frontier): params ratio against the predicted latency ratio,
    and the measured ratio with its 95% interval per backend, next to the original (1, 1)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5))
    xs = [p.ratios.get("params") for p in report.plans]
    pred = [p.ratios.get("latency") for p in report.plans]
    if any(v is not None for v in pred):
        ax.plot(xs, pred, "o--", label="predicted (sum of per-layer figures)", zorder=3)
    for b in report.backends if report.verify else []:
        pts = [(x, v) for x, p in zip(xs, report.plans, strict=True) for v in p.verified
               if v.backend == b and v.ratio is not None and v.ci is not None]
        if pts:
            ax.errorbar([x for x, _ in pts], [v.ratio for _, v in pts],
                        yerr=[[v.ratio - v.ci[0] for _, v in pts],
                              [v.ci[1] - v.ratio for _, v in pts]],
                        fmt="s", capsize=3, label=f"measured on {b} (95%)", zorder=4)
    for i, (x, y) in enumerate(zip(xs, pred, strict=True), 1):
        if x is not None and y is not None:
            ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.scatter([1.0], [1.0], marker="*", s=120, color="grey", label="original", zorder=5)
    ax.set_xlabel("params / original")
    ax.set_ylabel("latency / original")
    ax.legend(fontsize=8)
    note = "" if report.verify else (" (from the table, not measured)" if report.from_table
                                     else " (not verified)")
    head = (f"convcost plan: {report.name}, {len(report.plans)} plan(s){note}\n"
            f"{(report.device or {}).get('name', '')}")
    ax.set_title(head, fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path, head)


def _save(fig: Any, plt: Any, path: Path, title: str) -> Path:
    """Render the PNG in memory and write it atomically (never a half-written image); the
    title is also stored in the PNG's Title text chunk, so scripts can tell the plots apart."""
    import io

    from convcost import __version__
    from convcost.files import atomic_write_bytes

    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=110, format="png",
                    metadata={"Title": title.replace("\n", ": "),
                              "Software": f"convcost {__version__}"})
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue(), "plot")
    return path


def check_plot_path(path: Path) -> None:
    """Before any work: a .png name in a writable folder, and matplotlib importable."""
    from convcost.files import check_destination

    if path.suffix.lower() != ".png":
        raise InputError(f"--plot {path}: plots are PNG images; use a name ending in .png")
    check_destination(path, "plot")
    _plt()


def plot_sweep(sweep: Any, path: Path) -> Path:
    """A sweep: compare draws each variant's latency ratio (with its 95% interval) against the
    batch, one line per variant and thread count, the MAC ratio dotted in the same colour;
    analyze draws the whole model's latency per sample against the batch."""
    from convcost.report.sweep import summary_rows

    plt = _plt()
    rows = [d for d in summary_rows(sweep) if d["batch"]]
    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for d in rows:
        series.setdefault((d["row"], d["threads"]), []).append(d)
    compare = sweep.command == "compare"
    for (label, threads), pts in series.items():
        pts = sorted(pts, key=lambda d: d["batch"])
        key = "latency_ratio" if compare else "latency_per_sample_ms"
        pts = [d for d in pts if d[key] is not None]
        if not pts or (compare and all(d[key] == 1.0 for d in pts)):
            continue  # the baseline's ratio is 1 by definition
        xs = [d["batch"] for d in pts]
        ys = [d[key] for d in pts]
        name = label + (f", {threads} thr" if len({t for _, t in series}) > 1 else "")
        if compare:
            lo = [y - (d["latency_ratio_ci"] or [y, y])[0] for y, d in zip(ys, pts, strict=True)]
            hi = [(d["latency_ratio_ci"] or [y, y])[1] - y for y, d in zip(ys, pts, strict=True)]
            line = ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=name)
            ax.plot(xs, [d["macs_ratio"] for d in pts], ":", color=line[0].get_color())
        else:
            ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch")
    if compare:
        ax.axhline(1.0, color="lightgrey", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("latency / original (dotted: MACs / original)")
    else:
        ax.set_ylabel("latency per sample (ms)")
    ax.legend(fontsize=8)
    title = f"{sweep.name}: {'latency ratio' if compare else 'latency'} against the batch"
    pass_name = getattr(sweep.points[0].report, "pass_name", "inference")
    ax.set_title(f"{title} ({pass_name})")
    return _save(fig, plt, path, title)
