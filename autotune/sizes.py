"""Parse and format memory sizes: `24GiB`, `24GB`, `512MiB`, `1.5G`, plain bytes."""

from __future__ import annotations

import re

from .errors import UsageError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}
# A size without a unit is bytes; below 1 MiB it is surely a forgotten unit (`--gpu-memory 80`).
MIN_BARE_BYTES = 1024**2
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, flag: str = "--gpu-memory") -> int:
    """Bytes in `text`. Binary units (GiB) are powers of 1024, decimal ones (GB) of 1000;
    a bare `G` means GiB, as nvidia-smi and PyTorch report."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise UsageError(flag, f"cannot read size {text!r}", "write it like 24GiB, 80GB, 512MiB or a number of bytes")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UsageError(flag, f"size must be positive, got {text!r}")
    if unit == "" and value < MIN_BARE_BYTES:
        number = match.group(1)
        raise UsageError(flag, f"{text.strip()} has no unit, so it means {value} bytes",
                         f"write {number}GiB (or {number}GB, {number}MiB); a bare number must be bytes, at least 1 MiB")
    return value


def format_size(n: int | float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
