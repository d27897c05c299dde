"""Start-up and whole-command speed (issue 16), measured side by side in one run.

- Fresh processes, interleaved, median of REPEATS: ``python -c "import torch"``,
  ``convcost --help``, ``convcost analyze examples/tiny.yaml --no-time``, ``convcost analyze
  examples/models.py:ResNet50 --no-time -f json``; the last two also with ``CONVCOST_SLOW_EXIT=1``
  (the normal interpreter teardown instead of ``os._exit``), to show what the fast exit saves.
- ``python -X importtime``: the largest imports of ``analyze examples/tiny.yaml --no-time -f
  json`` (the import budget), and whether rich / yaml / fvcore's unused modules are loaded.
- ``compare --groups 1,2,4 --no-time`` on table specs of 10, 100 and 1,000 convs.
- The main job, ``convcost compare --groups 1,2,4,8`` (timed, default budget, empty latency
  table): wall time and how many measurements converged.

Goals: tiny spec within 1.1x of import torch; ResNet-50 JSON within import torch + 1 s;
1,000-layer compare under 15 s; the main job under 8 s on a quiet machine.

    python benchmarks/startup.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import environment, write_section  # noqa: E402
from benchmarks._specs import table_spec  # noqa: E402

PY = sys.executable


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def import_budget() -> tuple[list[tuple[str, float]], list[str]]:
    """Top-level imports of the tiny JSON command by cumulative time (ms), and the heavy
    modules it should not load that it did."""
    p = subprocess.run([PY, "-X", "importtime", "-m", "convcost", "analyze",
                        "examples/tiny.yaml", "--no-time", "-f", "json"], cwd=ROOT,
                       capture_output=True, text=True, check=True)
    tops: list[tuple[str, float]] = []
    loaded = set()
    for line in p.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cum, name = line.split("|")
        loaded.add(name.strip())
        if not name.startswith("  ") and name.strip() and cum.strip().isdigit():
            tops.append((name.strip(), int(cum) / 1000))
    tops.sort(key=lambda t: -t[1])
    unwanted = [m for m in ("rich", "fvcore.nn.focal_loss", "iopath", "tabulate", "portalocker")
                if m in loaded]
    return tops[:8], unwanted


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    a = ap.parse_args(argv)
    env = dict(os.environ)
    slow = {**env, "CONVCOST_SLOW_EXIT": "1"}
    tiny_cmd = [PY, "-m", "convcost", "analyze", "examples/tiny.yaml", "--no-time"]
    res_cmd = [PY, "-m", "convcost", "analyze", "examples/models.py:ResNet50", "--no-time", "-f",
               "json"]
    cases = {  # key: (label, command, environment)
        "torch": ('`python -c "import torch"`', [PY, "-c", "import torch"], env),
        "help": ("`convcost --help`", [PY, "-m", "convcost", "--help"], env),
        "tiny": ("`convcost analyze examples/tiny.yaml --no-time`", tiny_cmd, env),
        "tiny-slow": ("the same, with the interpreter's teardown", tiny_cmd, slow),
        "resnet": ("`convcost analyze examples/models.py:ResNet50 --no-time -f json`", res_cmd,
                   env),
        "resnet-slow": ("the same, with the interpreter's teardown", res_cmd, slow),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(a.repeats):  # interleaved: drift hits every case alike
        for k, (_, cmd, e) in cases.items():
            times[k].append(timed(cmd, e))
    med = {k: statistics.median(v) for k, v in times.items()}
    torch_s = med["torch"]
    lines = ["## Start-up and whole commands (issue 16)", "", environment(),
             f"Fresh processes, interleaved, median of {a.repeats}. The teardown rows set "
             "`CONVCOST_SLOW_EXIT=1`: Python's normal exit instead of `os._exit`.", "",
             "| command | median (s) | vs import torch |", "|---|---:|---:|"]
    for k, (label, _, _) in cases.items():
        v = med[k]
        lines.append(f"| {label} | {v:.2f} | x{v / torch_s:.2f} (+{v - torch_s:.2f} s) |")
    tiny, res = med["tiny"], med["resnet"]

    def saved(k: str) -> float:
        return statistics.median(s - f for s, f in zip(times[f"{k}-slow"], times[k],
                                                        strict=True))

    lines += ["", f"Goals: tiny spec within 1.1x of import torch: x{tiny / torch_s:.2f} "
              f"({'met' if tiny <= 1.1 * torch_s else 'NOT met'}); ResNet-50 JSON within import "
              f"torch + 1 s: +{res - torch_s:.2f} s ({'met' if res - torch_s <= 1 else 'NOT met'})."
              f" The fast exit saves {saved('tiny'):.2f} s on the tiny spec and "
              f"{saved('resnet'):.2f} s on ResNet-50 (median of the paired differences). "
              "The teardown rows still freeze the GC after start-up, which spares most of the "
              "teardown's collection; on this host the remaining difference is within its noise. "
              "`import torch` alone pays the whole teardown of torch at its exit (about 0.5 s "
              "here), which convcost's commands skip: they can finish sooner than it.", ""]
    tops, unwanted = import_budget()
    lines += ["Import budget of `analyze examples/tiny.yaml --no-time -f json` (`python -X "
              "importtime`, top-level imports by cumulative time): "
              + ", ".join(f"{n} {ms:.0f} ms" for n, ms in tops) + ". Modules it should not load: "
              + (", ".join(unwanted) if unwanted else "none (no rich, no iopath/tabulate/"
                 "focal_loss from fvcore)") + ".", ""]
    lines += ["### `compare --groups 1,2,4 --no-time` on table specs", "",
              "| layers | wall (s) |", "|---:|---:|"]
    with tempfile.TemporaryDirectory() as d:
        for n in (10, 100, 1000):
            spec = table_spec(n, Path(d))
            t = statistics.median(timed([PY, "-m", "convcost", "compare", str(spec), "--groups",
                                         "1,2,4", "--no-time"]) for _ in range(3))
            lines.append(f"| {n:,} | {t:.2f} |")
            if n == 1000:
                k1000 = t
    lines += ["", f"1,000 layers in {k1000:.1f} s (goal: under 15 s, "
              f"{'met' if k1000 < 15 else 'NOT met'}).", ""]
    with tempfile.TemporaryDirectory() as cache:
        e = {**env, "CONVCOST_CACHE_DIR": cache}
        t0 = time.perf_counter()
        p = subprocess.run([PY, "-m", "convcost", "compare", "--groups", "1,2,4,8", "-f", "json"],
                           cwd=ROOT, env=e, capture_output=True, text=True)
        main_s = time.perf_counter() - t0
    d = json.loads(p.stdout)
    rows = [d["baseline"], *d["variants"]]
    conv = sum(bool(((r.get("timing") or {}).get("measurement") or {}).get("converged"))
               for r in rows)
    lines += [f"Main job (`convcost compare --groups 1,2,4,8`, timed, empty latency table): "
              f"{main_s:.1f} s, exit {p.returncode}; {conv} of {len(rows)} measurements "
              f"converged (goal: under 8 s on a quiet machine with no loss of convergence)."]
    write_section("startup", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
