"""Devices, numerics settings and the device fingerprint recorded with every timed report."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from convcost.errors import InputError

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
          "bf16": torch.bfloat16}


def resolve_device(text: str) -> str:
    """``auto`` -> ``cuda:0`` when CUDA is available else ``cpu``; validates ``cuda:N``."""
    t = text.strip().lower()
    if t == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if t == "cpu":
        return "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", t)
    if not m:
        raise InputError(f"--device {text!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise InputError(f"--device {text}: CUDA is not available here (torch "
                         f"{torch.__version__}, built with CUDA {torch.version.cuda}); use "
                         "--device cpu")
    idx = int(m.group(1) or 0)
    if idx >= torch.cuda.device_count():
        raise InputError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
    return f"cuda:{idx}"


@dataclass(frozen=True)
class Numerics:
    """How kernels run: device, dtype, memory format, CPU threads."""

    device: str = "cpu"
    dtype: str = "fp32"
    channels_last: bool = False
    threads: int | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"


@contextmanager
def numerics(n: Numerics) -> Iterator[None]:
    """Apply TF32 flags (on only for ``tf32``), cudnn.benchmark and the CPU thread count; restore
    everything afterwards. ``fp32`` therefore means true FP32, not PyTorch's TF32 default for
    cuDNN convolutions."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark, torch.get_num_threads())
    tf32 = n.dtype == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    if n.threads:
        torch.set_num_threads(n.threads)
    try:
        if n.is_cuda:
            with torch.cuda.device(n.device):
                yield
        else:
            yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved[:3]
        torch.set_num_threads(saved[3])


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def _onednn_version() -> str | None:
    m = re.search(r"(?:oneDNN|MKL-DNN|mkldnn)\D*v?(\d+\.\d+(?:\.\d+)?)", torch.__config__.show())
    return m.group(1) if m else None


@lru_cache(maxsize=4)
def _driver_version(index: int) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader",
                              f"--id={index}"], capture_output=True, text=True, timeout=10)
        v = out.stdout.strip()
        return v or None
    except (OSError, subprocess.SubprocessError):
        return None


def fingerprint(n: Numerics, batch: int | None = None) -> dict[str, Any]:
    """Everything that changes a timing: device, versions, flags, dtype, memory format, batch."""
    fp: dict[str, Any] = {
        "device": n.device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "onednn": _onednn_version() if torch.backends.mkldnn.is_available() else None,
        "threads": n.threads or torch.get_num_threads(),
        "tf32": {"matmul": n.dtype == "tf32", "cudnn": n.dtype == "tf32"},
        "dtype": n.dtype,
        "memory_format": n.memory_format,
        "batch": batch,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
    }
    if n.is_cuda:
        idx = int(n.device.split(":")[1])
        p = torch.cuda.get_device_properties(idx)
        fp.update(name=p.name, compute_capability=f"{p.major}.{p.minor}",
                  memory_gib=round(p.total_memory / 2**30, 1), sm_count=p.multi_processor_count,
                  driver=_driver_version(idx))
    else:
        fp.update(name=_cpu_name(), compute_capability=None, driver=None)
    return fp


def fingerprint_key(fp: dict[str, Any]) -> str:
    """Identity of a device for cached peaks: name, capability, driver, torch, CUDA, threads."""
    parts = [fp.get("name"), fp.get("compute_capability"), fp.get("driver"), fp.get("torch"),
             fp.get("cuda"), fp.get("threads") if not str(fp.get("device")).startswith("cuda")
             else None]
    return "|".join(str(p) for p in parts)


def fingerprint_line(fp: dict[str, Any]) -> str:
    """One line for report footers."""
    bits = [f"{fp.get('name')}"]
    if fp.get("compute_capability"):
        bits.append(f"sm_{fp['compute_capability'].replace('.', '')}")
    if fp.get("driver"):
        bits.append(f"driver {fp['driver']}")
    bits.append(f"torch {fp['torch']}")
    if fp.get("cuda"):
        bits.append(f"CUDA {fp['cuda']}")
    if fp.get("cudnn"):
        bits.append(f"cuDNN {fp['cudnn']}")
    if fp.get("onednn"):
        bits.append(f"oneDNN {fp['onednn']}")
    bits.append(f"{fp['threads']} threads")
    tf = fp.get("tf32", {})
    bits.append(f"TF32 {'on' if tf.get('cudnn') else 'off'}")
    bits.append(f"{fp['dtype']}, {fp['memory_format']}")
    if fp.get("batch"):
        bits.append(f"batch {fp['batch']}")
    return ", ".join(bits)
