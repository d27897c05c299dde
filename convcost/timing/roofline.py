"""Roofline: measured device peaks, cached per device fingerprint, and per-row bound times.

Bound time = max(FLOPs / peak FLOP/s, bytes / peak bandwidth), with the compulsory bytes
(input + weights + output, each moved once). % of bound = bound / measured; a row is
memory-bound when its bytes term is the larger one. Peaks are measured by ``convcost calibrate``:
a large device-to-device copy for bandwidth (read + write counted) and a large GEMM per dtype.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from convcost.errors import InputError
from convcost.files import atomic_write_text
from convcost.paths import cache_dir
from convcost.timing.device import DTYPES, Numerics, fingerprint, fingerprint_key, numerics
from convcost.timing.harness import TimingConfig, measure_one


def cache_file() -> Path:
    return cache_dir() / "peaks.json"


@dataclass
class Peaks:
    """Measured peaks of one device: bandwidth in GB/s and dense GEMM TFLOP/s per dtype."""

    key: str
    device: str
    name: str
    bandwidth_gbs: float
    tflops: dict[str, float]
    measured_at: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(device: str, *, copy_mib: int | None = None, gemm_n: int | None = None,
              dtypes: tuple[str, ...] | None = None, max_time_s: float = 1.0,
              quick: bool = False) -> Peaks:
    """Measure the peaks of ``device`` (sizes default to large ones: 1 GiB copy and 8192^3 GEMM
    on CUDA, 256 MiB and 2048^3 on CPU)."""
    cuda = device.startswith("cuda")
    copy_mib = copy_mib or (1024 if cuda else 256)
    gemm_n = gemm_n or (8192 if cuda else 2048)
    dtypes = dtypes or (("fp32", "tf32", "fp16", "bf16") if cuda else ("fp32", "bf16"))
    n32 = Numerics(device=device, dtype="fp32")
    fp = fingerprint(n32)
    cfg = TimingConfig(numerics=n32, max_time_s=max_time_s, min_samples=5, rel_iqr=0.05)
    elems = copy_mib * 2**20 // 4
    src = torch.empty(elems, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    m = measure_one(lambda: dst.copy_(src), cfg)
    assert m.median_ms
    bw = 2 * src.numel() * 4 / (m.median_ms / 1e3) / 1e9
    tflops: dict[str, float] = {}
    details: dict[str, Any] = {"copy_bytes": copy_mib * 2**20, "gemm_n": gemm_n,
                               "copy_ms": m.median_ms, "quick": quick}
    for dt in dtypes:
        nm = Numerics(device=device, dtype=dt)
        try:
            with numerics(nm):
                a = torch.randn(gemm_n, gemm_n, device=device).to(DTYPES[dt])
                b = torch.randn(gemm_n, gemm_n, device=device).to(DTYPES[dt])
            mm = measure_one(lambda a=a, b=b: a @ b, TimingConfig(numerics=nm, max_time_s=max_time_s,
                                                                   min_samples=5, rel_iqr=0.05))
            if mm.median_ms:
                tflops[dt] = 2 * gemm_n**3 / (mm.median_ms / 1e3) / 1e12
                details[f"gemm_ms_{dt}"] = mm.median_ms
            else:
                details[f"gemm_error_{dt}"] = mm.error
        except Exception as e:  # a dtype the backend does not support
            details[f"gemm_error_{dt}"] = f"{type(e).__name__}: {e}"[:200]
    return Peaks(key=fingerprint_key(fp), device=device, name=str(fp.get("name")),
                 bandwidth_gbs=bw, tflops=tflops,
                 measured_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 details=details)


def load_all() -> dict[str, Any]:
    try:
        data = json.loads(cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, RecursionError):
        return {}


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def valid_peaks(d: Any) -> Peaks | None:
    """A stored calibration, when every field has its type and every figure is finite and
    positive (an edited or damaged cache is ignored, never quoted)."""
    if not isinstance(d, dict) or not all(isinstance(d.get(k), str)
                                          for k in ("key", "device", "name", "measured_at")):
        return None
    tf = d.get("tflops")
    if not _positive(d.get("bandwidth_gbs")) or not isinstance(tf, dict) or not all(
            isinstance(k, str) and _positive(v) for k, v in tf.items()):
        return None
    try:
        peaks = Peaks(**d)
    except TypeError:
        return None
    return peaks if isinstance(peaks.details, dict) else None


def save(peaks: Peaks) -> tuple[Path, dict[str, Any] | None]:
    """Store ``peaks`` under its fingerprint key in the cache file: (the path, the full
    calibration kept instead when ``peaks`` is a quick one and a full one is already there)."""
    data = load_all()
    old = data.get(peaks.key)
    if peaks.details.get("quick") and isinstance(old, dict) and \
            not (old.get("details") or {}).get("quick"):
        return cache_file(), old
    data[peaks.key] = peaks.to_dict()
    path = cache_file()
    if path.is_symlink():
        raise InputError(f"{path}: the calibration cache is a symbolic link; convcost never "
                         "writes through a link in its cache (remove it)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{path.parent}: the cache folder cannot be created "
                         f"({e.strerror or e}); set CONVCOST_CACHE_DIR to a writable folder") from e
    atomic_write_text(path, json.dumps(data, indent=2), "calibration cache")
    return path, None


def lookup(n: Numerics) -> Peaks | None:
    """Cached peaks for this device (by fingerprint), if ``convcost calibrate`` ran here."""
    return valid_peaks(load_all().get(fingerprint_key(fingerprint(n))))


def peak_tflops(peaks: Peaks, dtype: str) -> float | None:
    return peaks.tflops.get(dtype) or (peaks.tflops.get("fp32") if dtype == "tf32" else None)


def roofline(flops: int | None, nbytes: int | None, latency_ms: float | None,
             peaks: Peaks | None, dtype: str) -> dict[str, Any] | None:
    """Achieved TFLOP/s and GB/s, and with peaks the bound time, % of bound and the bound kind."""
    if flops is None or nbytes is None or latency_ms is None or latency_ms <= 0:
        return None
    s = latency_ms / 1e3
    out: dict[str, Any] = {"flops": flops, "bytes": nbytes, "achieved_tflops": flops / s / 1e12,
                           "achieved_gbs": nbytes / s / 1e9,
                           "intensity_flop_per_byte": flops / nbytes if nbytes else None}
    if peaks is not None:
        pf = peak_tflops(peaks, dtype)
        t_mem = nbytes / (peaks.bandwidth_gbs * 1e9)
        t_cmp = flops / (pf * 1e12) if pf else 0.0
        bound_s = max(t_mem, t_cmp)
        out.update(bound_ms=bound_s * 1e3, pct_of_bound=100.0 * bound_s / s,
                   bound="memory" if t_mem >= t_cmp else "compute",
                   peak_tflops=pf, peak_gbs=peaks.bandwidth_gbs)
    return out


def compulsory_bytes(module: torch.nn.Module, in_shape: tuple[int, ...] | list[int],
                     out_shape: tuple[int, ...] | list[int], dtype: str) -> int:
    """Input + weights + output, each once, at ``dtype``'s element size."""
    size = torch.empty((), dtype=DTYPES[dtype]).element_size()
    n_in = 1
    for d in in_shape:
        n_in *= d
    n_out = 1
    for d in out_shape:
        n_out *= d
    n_w = sum(p.numel() for p in module.parameters())
    return (n_in + n_out + n_w) * size
