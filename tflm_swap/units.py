"""Byte sizes and bandwidths as people write them: '256KiB', '1MB', '40MB/s'."""

from __future__ import annotations

import re

from .errors import TflmSwapError

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
}


def parse_size(text: str | int) -> int:
    """Parse '256KiB', '256k' (binary), '1MB' (decimal), '4096' into bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise TflmSwapError(f"cannot read size {text!r}: use e.g. 4096, 256KiB, 256k, 1MiB or 1MB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_rate(text: str) -> float:
    """Parse a bandwidth such as '40MB/s' or '32MiB/s' into bytes per second."""
    return float(parse_size(text.strip().removesuffix("/s")))


def format_bytes(n: float) -> str:
    """Bytes as "512 B", "1.5 KiB", "3.0 MiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def at_least(minimum: int):
    """An argparse type: an integer >= `minimum` (argparse reports anything else as a usage error)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def probability(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
    return value
