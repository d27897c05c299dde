"""Human-readable numbers and quantities with decimal prefixes (k, M, G, T)."""

from __future__ import annotations

import math
import re

_PREFIXES = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
_PREFIX_VALUE = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def human(n: float | int | None, digits: int = 3) -> str:
    """Format a count with a decimal prefix and ``digits`` significant digits: 25557032 -> '25.6M'."""
    if n is None:
        return "-"
    if n == 0:
        return "0"
    a = abs(n)
    for scale, prefix in _PREFIXES:
        if a >= scale * 0.9995:
            return f"{_sig(n / scale, digits)}{prefix}"
    if float(n).is_integer():
        return str(int(n))
    return _sig(n, digits)


def _sig(x: float, digits: int) -> str:
    """``digits`` significant digits in plain notation (0.9996 at 3 digits is '1.00')."""
    if x == 0:
        return "0"
    x = float(f"{x:.{digits - 1}e}")  # round first: the decimals depend on the rounded value
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def fmt_ms(ms: float | None) -> str:
    """A latency given in milliseconds, in plain notation with a unit that fits: '812 us',
    '3.79 ms', '1.18 s', '95.3 s' (never '1.18e+03 ms')."""
    if ms is None:
        return "-"
    if ms != ms or ms in (float("inf"), float("-inf")):
        return str(ms)
    for scale, unit in ((1e-6, "ns"), (1e-3, "us"), (1.0, "ms")):
        text = _sig(ms / scale, 3) if ms else "0"
        if abs(float(text)) < 1000:  # 999.6 ms is '1.00 s', not '1000 ms'
            return f"{text} {unit}"
    return f"{_sig(ms / 1000, 3)} s"


def fmt_ratio(r: float | None) -> str:
    """Format a ratio to the baseline as 'x0.031'."""
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return "-"
    return f"x{_sig(r, 3) if r < 100 else f'{r:.0f}'}"


_QTY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKMGT]?)\s*$")


def parse_count(text: str | int | float) -> float:
    """Parse a count with an optional decimal prefix: '25M' -> 25e6, '4.1G' -> 4.1e9, 1000 -> 1000.

    Raises ValueError with what is allowed.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a count; use a number with an optional k/M/G/T prefix")
    if isinstance(text, (int, float)):
        if text < 0 or not math.isfinite(text):
            raise ValueError(f"{text!r} must be a finite number >= 0")
        return float(text)
    m = _QTY.match(str(text))
    if not m:
        raise ValueError(
            f"{text!r} is not a count; use a number with an optional k/M/G/T prefix, e.g. '25M'"
        )
    v = float(m.group(1)) * _PREFIX_VALUE[m.group(2)]
    if not math.isfinite(v):
        raise ValueError(f"{text!r} is not a finite count")
    return v


_TIME_UNITS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3}
_TIME = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|µs|ms|s)\s*$")


def parse_duration_ms(text: str | int | float) -> float:
    """Parse a duration such as '12 ms', '800us', '0.5 s' into milliseconds (a bare number is ms)."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration; use e.g. '12 ms', '800 us', '0.5 s'")
    if isinstance(text, (int, float)):
        if text < 0 or not math.isfinite(text):
            raise ValueError(f"{text!r} must be a finite duration >= 0")
        return float(text)
    m = _TIME.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration; use e.g. '12 ms', '800 us', '0.5 s'")
    v = float(m.group(1)) * _TIME_UNITS[m.group(2)]
    if not math.isfinite(v):
        raise ValueError(f"{text!r} is not a finite duration")
    return v


_PERCENT = re.compile(r"^\s*\+?\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*%\s*$")


def parse_percent(text: str) -> float:
    """'+5%' -> 0.05 (a finite, non-negative percentage); raises ValueError otherwise."""
    m = _PERCENT.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a percentage such as '+5%'")
    v = float(m.group(1)) / 100.0
    if not math.isfinite(v):
        raise ValueError(f"{text!r} is not a finite percentage")
    return v


_BYTES = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
_BYTE_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 1 << 10,
               "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_BYTES_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?i?[bB]?)\s*$")


def fmt_bytes(n: int | float | None) -> str:
    """Bytes with a binary prefix, 3 significant digits: 25690112 -> '24.5 MiB'."""
    if n is None:
        return "-"
    for scale, unit in _BYTES:
        if abs(n) >= scale * 0.9995:
            return f"{_sig(n / scale, 3)} {unit}"
    return f"{int(n)} B"


def parse_bytes(text: str | int | float) -> float:
    """'12MiB' -> 12582912, '50 MB' -> 5e7, '4096' -> 4096 (bytes); ValueError otherwise."""
    if isinstance(text, bool):
        raise ValueError("use a size such as 12MiB, 50MB or 4096")
    if isinstance(text, (int, float)):
        v, unit = float(text), ""
    else:
        m = _BYTES_RE.match(str(text))
        if not m or m.group(2).lower() not in _BYTE_UNITS:
            raise ValueError(f"{str(text)[:40]!r} is not a size; use e.g. 12MiB, 50MB or 4096 "
                             "(bytes)")
        v, unit = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{text!r} is not a size")
    return v * _BYTE_UNITS[unit]
