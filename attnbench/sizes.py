"""Sizes on the command line: ``1k`` = 1024, ``1k..256k`` doubles, lists with commas."""

from __future__ import annotations

import re

from attnbench.errors import UsageError

_SIZE = re.compile(r"^(\d+)([kKmM]?)$")
_SCALE = {"": 1, "k": 1024, "m": 1024 * 1024}
# The largest size accepted anywhere (a length of 2**40 tokens is far beyond any machine);
# it keeps every count a 64-bit integer in tables and files.
MAX_SIZE = 2**40


def parse_size(text: str) -> int:
    """``"4k"`` -> 4096, ``"8192"`` -> 8192; anything else, zero or negative is a UsageError."""
    m = _SIZE.match(text.strip())
    if not m:
        raise UsageError(f"bad size {text!r}: expected a positive integer like 512, 4k or 1m")
    value = int(m.group(1)) * _SCALE[m.group(2).lower()]
    if value <= 0:
        raise UsageError(f"bad size {text!r}: sizes must be positive")
    if value > MAX_SIZE:
        raise UsageError(f"bad size {text!r}: at most {format_size(MAX_SIZE)} ({MAX_SIZE})")
    return value


def parse_sizes(text: str) -> tuple[int, ...]:
    """Parse ``"1k..256k"`` (doubling), ``"1k,3k,8192"`` or a mix; sorted, without repeats."""
    if not text or not text.strip():
        raise UsageError("empty size list: expected e.g. 1k..64k or 1k,3k,8192")
    sizes: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if ".." in part:
            lo_text, _, hi_text = part.partition("..")
            if not lo_text or not hi_text:
                raise UsageError(f"bad range {part!r}: expected LOW..HIGH, e.g. 1k..256k")
            lo, hi = parse_size(lo_text), parse_size(hi_text)
            if lo > hi:
                raise UsageError(f"bad range {part!r}: {lo} is larger than {hi}")
            n = lo
            while n <= hi:
                sizes.add(n)
                n *= 2
        else:
            sizes.add(parse_size(part))
    return tuple(sorted(sizes))


def format_size(n: int) -> str:
    """1024 -> ``1k``, 131072 -> ``128k``, 1000 -> ``1000``."""
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}m"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}k"
    return str(n)
