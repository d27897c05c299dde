"""calibrate's report: the measured peaks, as text or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convcost.report.common import json_text


def render_calibration(peaks: Any, path: Path | None, fmt: str) -> str:
    """The peaks (bandwidth in GB/s, GEMM TFLOP/s per dtype) and where they were cached."""
    if fmt == "json":
        return json_text({**peaks.to_dict(), "cache": str(path) if path else None}) + "\n"
    lines = [f"device:     {peaks.name} ({peaks.device})",
             f"bandwidth:  {peaks.bandwidth_gbs:,.1f} GB/s (copy, read + write)"]
    lines += [f"GEMM {dt:5s} {tf:,.2f} TFLOP/s" for dt, tf in peaks.tflops.items()]
    lines += [f"{k}: {v}" for k, v in peaks.details.items() if k.startswith("gemm_error")]
    lines.append(f"cached in {path} (key: {peaks.key})" if path else "not cached")
    return "\n".join(lines) + "\n"
