"""convcost's counts against torchvision's published ones: every classification model (issue 11)
and every other namespace with published ``_ops`` (issue 24): segmentation, video, detection
(keypoint and instance segmentation included), optical flow and quantized.

Other namespaces (``--namespaces``, section "torchvision-namespaces"): each builder is built as
its published weights build it (frozen batch norms in detection backbones, aux heads, class
counts, int8 conversion), with random values: the weights' download and ``load_state_dict`` are
replaced by no-ops while it is built; every parameter is counted (a pretrained recipe freezes
some backbone layers, torchvision counts them). Inputs: what the figures were published at:
520 x 520 for segmentation, 16 frames at the weights' crop size for video, a list of one
3 x 224 x 224 image for detection (its transform resizes it), two 512 x 512 frames for
optical flow. Counted by ``analyze_model`` with ``--count-on auto`` (never meta tensors for
detection). Detection figures depend on how many boxes the RPN and the score thresholds keep:
with random weights that is not what the published run kept, and the table says so.

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


OTHER = ("segmentation", "video", "detection", "optical_flow", "quantization")


def published_inputs(ns: str, weights) -> object:
    from convcost.inputs import Example, Seq, TensorSpec

    crop = getattr(weights.transforms(), "crop_size", None)
    c = int(crop[0]) if crop else 224
    if ns == "segmentation":
        return Example.plain([(1, 3, 520, 520)])
    if ns == "video":
        return Example.plain([(1, 3, 16, c, c)])
    if ns == "detection":
        return Example((Seq("list", (TensorSpec((3, 224, 224)),)),))
    if ns == "optical_flow":
        return Example.plain([(1, 3, 512, 512), (1, 3, 512, 512)])
    return Example.plain([(1, 3, c, c)])


def build_as_published(tv, name: str, weights, ns: str):
    """The model its weights build, with random values (nothing downloaded or loaded)."""
    import torch
    from torchvision.models._api import WeightsEnum

    saved = WeightsEnum.get_state_dict, torch.nn.Module.load_state_dict
    WeightsEnum.get_state_dict = lambda self, *a, **k: {}
    torch.nn.Module.load_state_dict = lambda self, *a, **k: None
    try:
        kw = {"quantize": True} if ns == "quantization" else {}
        model = tv.models.get_model(name, weights=weights, **kw).eval()
    finally:
        WeightsEnum.get_state_dict, torch.nn.Module.load_state_dict = saved
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def namespace_rows(tv, namespaces, only) -> tuple[list[dict], list[str], float]:
    from convcost.counting.analysis import analyze_model
    from convcost.sources.tvmodels import namespace_of

    rows, fails, t0 = [], [], time.perf_counter()
    for name in sorted(tv.models.list_models()):
        ns = namespace_of(tv.models.get_model_builder(name))
        if ns not in namespaces or (only and name not in only):
            continue
        for w in tv.models.get_model_weights(name):
            if "_ops" not in w.meta:
                continue
            try:
                import torch

                torch.manual_seed(0)  # the random weights decide what a detector keeps
                model = build_as_published(tv, name, w, ns)
                ex = published_inputs(ns, w)
                t1 = time.perf_counter()
                r = analyze_model(model, ex, source=f"torchvision:{name}", name=name)
            except Exception as e:  # reported, the run goes on
                fails.append(f"{name} ({w.name}): {type(e).__name__}: {str(e).splitlines()[0]}")
                continue
            params = r.params
            if ns == "quantization":  # int8 weights are not parameters: the float model's
                fl = analyze_model(tv.models.get_model(name, weights=None, quantize=False),
                                   ex, source=name, name=name, count_on="meta")
                # googlenet's published weights drop its aux heads, inception_v3's keep them
                params = fl.params if w.meta["num_params"] == fl.params else (
                    fl.params - fl.params_never_called)
            gmacs, ops = r.paper_macs / 1e9, w.meta["_ops"]
            conv = r.by_operator.get("conv", 0) / 1e9
            row = {"ns": ns, "name": name, "weights": w.name, "input": ex.text(),
                   "params": params, "pub_params": w.meta["num_params"], "gmacs": gmacs,
                   "conv": conv, "ops": ops, "within": abs(gmacs - ops) <= 0.0005 + 1e-9,
                   "conv_within": abs(conv - ops) <= 0.0005 + 1e-9, "counter": r.counter,
                   "dynamic": any(n.startswith("data-dependent") for n in r.notes),
                   "s": time.perf_counter() - t1}
            rows.append(row)
            print(f"{ns:13s} {name:36s} {w.name:26s} params {params:>11,} / "
                  f"{row['pub_params']:>11,}  {gmacs:8.3f} (conv {conv:8.3f}) vs {ops:8.3f} "
                  f"{'ok' if row['within'] else 'OFF'} {r.counter} {row['s']:.1f}s", flush=True)
    return rows, fails, time.perf_counter() - t0


def namespace_section(tv, rows, fails, elapsed) -> str:
    table = ["| namespace | model | weights | input | params counted | published params | "
             "conv+linear GMACs | conv GMACs | published `_ops` | counter |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        mark = "" if r["within"] else (" (= conv)" if r["conv_within"] else " **differs**")
        table.append(f"| {r['ns']} | {r['name']} | {r['weights']} | `{r['input']}` | "
                     f"{r['params']:,} | {r['pub_params']:,}"
                     f"{'' if r['params'] == r['pub_params'] else ' **differs**'} | "
                     f"{r['gmacs']:.3f} | {r['conv']:.3f} | {r['ops']:.3f}{mark} | "
                     f"{r['counter']}{' (data-dependent)' if r['dynamic'] else ''} |")
    ok_p = sum(r["params"] == r["pub_params"] for r in rows)
    ok_m = sum(r["within"] for r in rows)
    dyn = [r for r in rows if r["dynamic"]]
    ok_dyn = sum(r["within"] or r["conv_within"] for r in dyn)
    static = [r for r in rows if not r["dynamic"]]
    return (f"## torchvision's other namespaces (issue 24)\n\n{environment()}"
            f"- torchvision {tv.__version__}; {len(rows)} weight configurations of the "
            "segmentation, video, detection, optical-flow and quantized namespaces, each built "
            "as its weights build it with random values (nothing downloaded), counted at the "
            f"input its figures were published at in {elapsed:.0f} s (2-core VM, shared)\n"
            "- quantized rows: int8 weights are not parameters (convcost's `params` of an int8 "
            "model is its float parameters only, and the report says how many int8 weights "
            "there are); the params column there is the same builder's float model, which is "
            "what `num_params` counts (without the auxiliary heads that never run, where the "
            "published weights drop them: googlenet). Their MACs are counted on the int8 "
            "model.\n- each model's random weights are seeded (`torch.manual_seed(0)` before "
            "it is built): a detector's boxes, and so its RoI heads' work, repeat run to run.\n\n"
            f"Params equal the published `num_params` in **{ok_p} of {len(rows)}**. MACs "
            f"(conv + linear) within `_ops`' 3-decimal rounding in **{ok_m} of {len(rows)}**: "
            f"**{sum(r['within'] for r in static)} of {len(static)}** models whose work "
            "depends on shapes only, and of the "
            f"{len(dyn)} detection models (data-dependent), {ok_dyn} match either in total or "
            "in their conv part. A detection model's box and mask heads run on the boxes its "
            "RPN and score thresholds keep, which the published figures (trained weights, a "
            "random 224 x 224 image) show: the MobileNet R-CNNs (`rpn_score_thresh` 0.05) kept "
            "no proposal (published `_ops` = their conv part, marked `(= conv)`); Faster R-CNN "
            "ResNet-50's 134.380 is its conv part (120.020) plus its box head on 1,000 "
            "proposals; Mask R-CNN and Keypoint R-CNN (legacy weights) ran their mask and "
            "keypoint heads on no detection. The seeded random weights here keep other "
            "numbers of boxes, so the rows marked **differs** differ in the work of their "
            "RoI heads (box, mask, keypoint), counted for the boxes these weights kept. "
            "The count holds for the values it ran on; convcost says so in every detection "
            "report (`data-dependent`).\n"
            + ("\nFailed to build or count:\n" + "\n".join(f"- {f}" for f in fails) + "\n"
               if fails else "")
            + "\n" + "\n".join(table) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stub-torchvision-ops", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--namespaces", default="classification",
                    help="comma list of classification and " + ", ".join(OTHER) + ", or all")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    tv = import_torchvision(a.stub_torchvision_ops)
    wanted = set(("classification", *OTHER) if a.namespaces == "all" else a.namespaces.split(","))
    others = [n for n in OTHER if n in wanted]
    if others:
        rows, fails, elapsed = namespace_rows(tv, others, {x for x in a.only.split(",") if x})
        body = namespace_section(tv, rows, fails, elapsed)
        print(body)
        if not a.no_write:
            write_section("torchvision-namespaces", body)
    if "classification" not in wanted:
        return
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
