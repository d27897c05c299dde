"""Shared by the benchmarks: environment header and section replacement in docs/benchmarks.md."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
from pathlib import Path

# $CONVCOST_BENCH_DOC redirects the output (e.g. under $OUT on a remote GPU machine)
DOC = Path(os.environ.get("CONVCOST_BENCH_DOC")
           or Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md")


def environment() -> str:
    import fvcore
    import torch

    import convcost

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = f"CPU: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        dev += f"; GPU: {p.name} (sm_{p.major}{p.minor}), CUDA {torch.version.cuda}, " \
               f"cuDNN {torch.backends.cudnn.version()}"
    return (f"- date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n- device: {dev}\n"
            f"- versions: Python {platform.python_version()}, torch {torch.__version__}, "
            f"fvcore {getattr(fvcore, '__version__', '?')}, convcost {convcost.__version__}\n")


def write_section(key: str, body: str) -> None:
    """Replace (or append) the section between <!-- key:start --> and <!-- key:end -->."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else (
        "# Benchmarks\n\nWritten by the scripts in `benchmarks/`; each section is replaced when "
        "its script runs.\n")
    block = f"<!-- {key}:start -->\n{body.rstrip()}\n<!-- {key}:end -->"
    pat = re.compile(rf"<!-- {re.escape(key)}:start -->.*?<!-- {re.escape(key)}:end -->", re.S)
    text = pat.sub(lambda _m: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def run_json(args: list[str], cache: str) -> tuple[dict, dict | None]:
    """``python -m convcost ARGS -f json`` in a fresh process with its own cache folder:
    ({rc, wall_s, error?}, the parsed report or None when stdout was not JSON)."""
    import json
    import subprocess
    import sys
    import time

    env = {**os.environ, "CONVCOST_CACHE_DIR": cache}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "convcost", *args, "-f", "json"],
                       cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True,
                       text=True)
    out: dict = {"rc": p.returncode, "wall_s": time.perf_counter() - t0}
    try:
        return out, json.loads(p.stdout)
    except json.JSONDecodeError:
        out["error"] = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return out, None
