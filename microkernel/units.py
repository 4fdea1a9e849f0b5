"""Sizes written by people: ``64M``, ``1G``, ``4096``, ``512K``."""

from __future__ import annotations

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """Parse a byte size with an optional binary suffix (K, M, G, T; 'iB'/'B' accepted)."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"negative size {text}")
        return text
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = s[-1:] if s[-1:] in _UNITS and s[-1:] else ""
    number = s[: len(s) - len(unit)].strip()
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (try 64M, 1G, 4096)") from None
    if value < 0:
        raise ValueError(f"negative size {text!r}")
    return int(value * _UNITS[unit])

