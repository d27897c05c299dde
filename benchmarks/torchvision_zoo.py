"""convcost's counts against torchvision's published ones, for every classification model (issue 11).

For each builder in ``torchvision.models`` and each of its weight configurations, the model is
built without weights (nothing downloaded) with the builder arguments those weights imply
(``image_size`` for ViTs, the number of classes) and counted at the weights' inference resolution:

- params: convcost's trainable parameters, and those minus the parameters of modules that never
  run in eval (googlenet's and inception_v3's auxiliary heads, which the published weights drop),
  against ``meta["num_params"]`` (googlenet's weights drop its aux heads, inception_v3's keep
  them: one of the two must match, and the table says which);
- MACs: convcost's conv + linear + attention total (``paper_macs``) against ``meta["_ops"]``
  (torchvision's "GFLOPS", multiply-adds, rounded to 3 decimals).

Goal: every model within ``_ops``' rounding, params exact. Written to docs/benchmarks.md.

    python benchmarks/torchvision_zoo.py [--stub-torchvision-ops] [--only NAME,...]

``--stub-torchvision-ops`` is for a scratch environment only: PyPI's torchvision 0.28.0 installed
with ``--no-deps`` next to the CPU build of torch 2.13 fails to import its compiled operators
(``torchvision::nms does not exist``); the model builders are pure Python and do not need them,
so the flag replaces ``torchvision._meta_registrations`` by an empty module before the import.
convcost itself never does this.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import environment, write_section  # noqa: E402


def import_torchvision(stub: bool):
    if stub:
        sys.modules["torchvision._meta_registrations"] = types.ModuleType(
            "torchvision._meta_registrations")
    import torchvision

    return torchvision


def builder_kwargs(name: str, weights) -> dict:
    """What the builder would set itself when loading these weights."""
    meta = weights.meta
    kw = {"num_classes": len(meta["categories"])} if meta.get("categories") else {}
    if name.startswith("vit_"):
        kw["image_size"] = meta["min_size"][0]
    if name in ("googlenet", "inception_v3"):
        kw["init_weights"] = False  # scipy's truncated normal: slow, and values never matter
    return kw


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stub-torchvision-ops", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    tv = import_torchvision(a.stub_torchvision_ops)
    from convcost.counting.analysis import analyze_model

    only = {x for x in a.only.split(",") if x}
    names = [n for n in tv.models.list_models(module=tv.models) if not only or n in only]
    rows, fails, t0 = [], [], time.perf_counter()
    n_configs = 0
    for name in sorted(names):
        enum = tv.models.get_model_weights(name)
        for w in enum:
            n_configs += 1
            try:
                size = w.transforms().crop_size[0]
                kw = builder_kwargs(name, w)
                model = tv.models.get_model(name, weights=None, **kw).eval()
                r = analyze_model(model, [(1, 3, size, size)], source=f"torchvision:{name}",
                                  name=name, count_on="meta")
            except Exception as e:  # reported, the run goes on
                fails.append(f"{name} ({w.name}): {type(e).__name__}: {str(e).splitlines()[0]}")
                continue
            ops = w.meta["_ops"]
            pub_params = w.meta["num_params"]
            run_params = r.params - r.params_never_called
            gmacs = r.paper_macs / 1e9
            within = abs(gmacs - ops) <= 0.0005 + 1e-9
            rel = (gmacs - ops) / ops if ops else 0.0
            # googlenet's weights drop its aux heads (published = the params that run);
            # inception_v3's keep its AuxLogits (published = every param): either must match
            rows.append({"name": name, "weights": w.name, "size": size, "params": r.params,
                         "run_params": run_params, "pub_params": pub_params,
                         "params_ok": pub_params in (r.params, run_params),
                         "params_match": "all" if pub_params == r.params else (
                             "running" if pub_params == run_params else "none"),
                         "gmacs": gmacs, "ops": ops,
                         "rel": rel, "within": within, "all_gmacs": r.macs / 1e9,
                         "counter": r.counter, "never": r.never_called})
            print(f"{name:28s} {w.name:24s} {size:4d}  params {r.params:>11,} "
                  f"(running {run_params:>11,}, published {pub_params:>11,})  "
                  f"{gmacs:9.3f} vs {ops:9.3f} GMACs {'ok' if within else 'OFF'}", flush=True)
    elapsed = time.perf_counter() - t0
    ok_p = sum(r["params_ok"] for r in rows)
    ok_m = sum(r["within"] for r in rows)
    worst = max(rows, key=lambda r: abs(r["rel"])) if rows else None
    table = ["| model | weights | input | params counted | never run | published params | "
             "conv+linear+attention GMACs | published `_ops` | rel. error | all counted ops |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        never = ", ".join(f"{n}" for n, _ in r["never"]) or ""
        table.append(
            f"| {r['name']} | {r['weights']} | {r['size']} | {r['params']:,} | "
            f"{r['params'] - r['run_params']:,}{' (' + never + ')' if never else ''} | "
            f"{r['pub_params']:,} ({'= ' + r['params_match'] if r['params_ok'] else '**differs**'}) "
            f"| {r['gmacs']:.3f} | "
            f"{r['ops']:.3f}{'' if r['within'] else ' **off**'} | {100 * r['rel']:+.3f}% | "
            f"{r['all_gmacs']:.3f} |")
    body = (f"## torchvision's published counts (issue 11)\n\n{environment()}"
            f"- torchvision {tv.__version__} (builders only, no weights downloaded); "
            f"{len(names)} classification builders, {n_configs} weight configurations, counted "
            f"on meta tensors at each configuration's inference resolution in {elapsed:.0f} s\n\n"
            f"**{ok_m} of {len(rows)}** configurations within `_ops`' 3-decimal rounding "
            f"(largest relative difference {100 * abs(worst['rel']):.3f}%, {worst['name']} "
            f"{worst['weights']}); published `num_params` equal convcost's params (all, or "
            f"those of the modules that run) in **{ok_p} of {len(rows)}**. \"All counted ops\" "
            "is convcost's default total (fvcore's convention: norms and pooling included), "
            "0-6% above the published figure.\n"
            + ("\nFailed to build or count:\n" + "\n".join(f"- {f}" for f in fails) + "\n"
               if fails else "")
            + "\n" + "\n".join(table) + "\n")
    print(body)
    if not a.no_write:
        write_section("torchvision-zoo", body)


if __name__ == "__main__":
    main()
