"""ShuffleNet V2's guideline experiments (Ma et al. 2018, Tables 1 and 2) on this machine.

G1 (Table 1): ten blocks of two 1x1 convs, c1 -> c2 and c2 -> c1, on a 56x56 input, at c1:c2 =
1:1, 1:2, 1:6, 1:12 with the FLOPs held (nearly) fixed. G2 (Table 2): ten stacked 1x1 group convs
c -> c on 56x56, g = 1, 2, 4, 8 with c^2/g fixed. Each in the paper's GPU channel set and its
second (ARM / CPU) set. ``--write-specs`` writes the specs to examples/shufflenet_v2/; the run
times each experiment's networks against the first (paired, interleaved rounds, single thread,
batch 1: the paper's ARM set-up) and writes the section 'shufflenet-v2' of docs/shufflenet_v2.md,
beside the paper's speeds and each network's memory access cost (MAC).

    python benchmarks/shufflenet_v2.py --write-specs
    python benchmarks/shufflenet_v2.py [--threads 1] [--budget 120]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "examples" / "shufflenet_v2"
DOC = ROOT / "docs" / "shufflenet_v2.md"

# (experiment, set, label, channels, paper speed at x1): channels (c1, c2) for G1, (c, g) for G2.
# Paper speeds: GPU in batches/s (batch 8), ARM/CPU in images/s (batch 1), the x1 column.
G1 = {"gpu": [("1:1", (128, 128), 1480), ("1:2", (90, 180), 1296), ("1:6", (52, 312), 876),
              ("1:12", (36, 432), 748)],
      "arm": [("1:1", (32, 32), 76.2), ("1:2", (22, 44), 72.9), ("1:6", (13, 78), 69.1),
              ("1:12", (9, 108), 57.6)]}
G2 = {"gpu": [("g=1", (128, 1), 2451), ("g=2", (180, 2), 1725), ("g=4", (256, 4), 1026),
              ("g=8", (360, 8), 634)],
      "arm": [("g=1", (64, 1), 40.0), ("g=2", (90, 2), 35.0), ("g=4", (128, 4), 32.9),
              ("g=8", (184, 8), 27.8)]}  # the paper's c=180 is not divisible by 8: 184
BLOCKS = 10
SIZE = 56


def spec_text(kind: str, chans: tuple[int, int], batch: int = 1) -> str:
    a, b = chans
    lines = []
    if kind == "g1":
        c_in = a
        for i in range(1, BLOCKS + 1):
            lines += [f"  - {{name: b{i}a, conv: {{out: {b}, kernel: 1}}}}",
                      f"  - {{name: b{i}b, conv: {{out: {a}, kernel: 1}}}}"]
        head = f"# ShuffleNet V2 G1: {BLOCKS} blocks of 1x1 {a}->{b} and {b}->{a} on {SIZE}x{SIZE}"
    else:
        c_in = a
        for i in range(1, BLOCKS + 1):
            lines.append(f"  - {{name: gc{i}, conv: {{out: {a}, kernel: 1, groups: {b}}}}}")
        head = f"# ShuffleNet V2 G2: {BLOCKS} 1x1 group convs {a}->{a}, g={b}, on {SIZE}x{SIZE}"
    return "\n".join([head, f"name: {kind}_{a}_{b}", f"input: [{c_in}, {SIZE}, {SIZE}]",
                      f"batch: {batch}", "layers:", *lines, ""])


def spec_path(kind: str, chans: tuple[int, int]) -> Path:
    return SPECS / f"{kind}_{chans[0]}_{chans[1]}.yaml"


def write_specs() -> None:
    SPECS.mkdir(parents=True, exist_ok=True)
    for kind, table in (("g1", G1), ("g2", G2)):
        for rows in table.values():
            for _, chans, _ in rows:
                spec_path(kind, chans).write_text(spec_text(kind, chans))


def measure(threads: int, budget: float) -> str:
    import torch

    from convcost.counting.analysis import analyze_model
    from convcost.counting.passes import itemsize
    from convcost.sources.load import load_source
    from convcost.timing.device import Numerics
    from convcost.timing.engine import TimingEngine
    from convcost.timing.harness import TimingConfig
    from convcost.timing.kernel import Kernel

    out = []
    cfg = TimingConfig(Numerics("cpu", "fp32", False, threads), max_time_s=3.0)
    groups = []
    engine = TimingEngine(cfg, budget_s=budget)
    for kind, table in (("g1", G1), ("g2", G2)):
        for which, rows in table.items():
            kernels, info = [], []
            for label, chans, paper in rows:
                loaded = load_source(str(spec_path(kind, chans)))
                a = analyze_model(loaded.model, loaded.example, source="", name=label)
                acc = sum(r.memory(itemsize("fp32"))["access_elements"] or 0 for r in a.layers)
                kernels.append(Kernel(loaded.model, loaded.example, None, a.macs, label, "model"))
                info.append((label, chans, paper, a.macs, acc))
            groups.append((kind, which, info, engine.add_group(kernels, paired=True)))
    engine.run()
    for kind, which, info, keys in groups:
        title = {"g1": "G1 (Table 1): equal channel widths", "g2": "G2 (Table 2): group count"}
        speed = "batches/s, batch 8" if which == "gpu" else "images/s, batch 1"
        out += [f"### {title[kind]}, the paper's {which.upper()} channel set", "",
                f"| {'c1:c2' if kind == 'g1' else 'g'} | channels | MACs | MAC (elements) | "
                f"MAC ratio | latency | latency ratio [95% CI] | paper speed ({speed}) | "
                "paper time ratio |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        base_acc, base_speed = info[0][4], info[0][2]
        for (label, chans, paper, macs, acc), key in zip(info, keys, strict=True):
            kr = engine.kernel(key)
            pr = engine.pair(keys[0], key)
            ratio = "1 (baseline)" if key == keys[0] else (
                f"{pr.ratio.ratio:.3f} [{pr.ratio.lo:.3f}, {pr.ratio.hi:.3f}]"
                if pr.ratio is not None else "-")
            ms = f"{kr.median_ms:.3f} ms" if kr.median_ms is not None else kr.status
            ch = f"({chans[0]}, {chans[1]})" if kind == "g1" else f"c={chans[0]}"
            out.append(f"| {label} | {ch} | {macs / 1e6:.1f}M | {acc / 1e6:.2f}M | "
                       f"{acc / base_acc:.2f} | {ms} | {ratio} | {paper:g} | "
                       f"{base_speed / paper:.2f} |")
        out.append("")
    del torch
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-specs", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=240.0)
    args = ap.parse_args(argv)
    if args.write_specs:
        write_specs()
        print(f"wrote {SPECS}")
        return 0
    sys.path.insert(0, str(ROOT))
    from benchmarks._report import environment

    body = measure(args.threads, args.budget)
    text = DOC.read_text() if DOC.exists() else ""
    start, end = "<!-- shufflenet-v2:start -->", "<!-- shufflenet-v2:end -->"
    block = f"{start}\n{environment()}- threads: {args.threads}, fp32, eager\n\n{body}\n{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text += "\n" + block + "\n"
    DOC.write_text(text)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
