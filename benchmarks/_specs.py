"""Generated table specs of N independent conv layers (the form --export-spec writes), for the
scaling benchmarks. Deterministic: the same N always gives the same file."""

from __future__ import annotations

import random
from pathlib import Path


def table_spec(n: int, folder: Path) -> Path:
    """A spec of ``n`` independent convs (dense, grouped, depthwise; 1x1 and 3x3; 14-56 px)."""
    rnd = random.Random(n)
    lines = [f"name: table_{n}", "batch: 1", "layers:"]
    for i in range(n):
        c = rnd.choice([16, 32, 64, 128])
        s = rnd.choice([14, 28, 56])
        g = rnd.choice([1, 2, 4, c])
        out = c if g == c else rnd.choice([16, 32, 64, 128])
        k = rnd.choice([1, 3])
        lines.append(f"  - {{name: l{i}, input: [{c}, {s}, {s}], conv: {{out: {out}, "
                     f"kernel: {k}, groups: {g}}}}}")
    path = folder / f"table_{n}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path
