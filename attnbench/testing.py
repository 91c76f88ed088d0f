"""Test hooks of the measurement: off unless asked for, never in a real measurement.

``ATTNBENCH_PLANT_SLOWDOWN="lightning2:0.10"`` (read when a call is prepared, not at import;
several as ``a:0.1,b:0.2``) makes ``prepare.prepare_call`` add about 10% extra work to every
timed call of that mechanism (``planted_slowdown``): on CUDA one GPU spin kernel on the same
stream lasting 10% of the call's median time, on the CPU busy matmuls. It exists to show
that the regression gate (``attnbench compare``) catches a slowdown::

    attnbench run --preset quick --mechanisms lightning2 --out base
    ATTNBENCH_PLANT_SLOWDOWN=lightning2:0.10 attnbench run --preset quick \\
        --mechanisms lightning2 --out slow
    attnbench compare base slow        # exit 1, every lightning2 case "regressed"

A warning is printed to stderr whenever it acts.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable

from attnbench.measure import synchronize

PLANT_ENV = "ATTNBENCH_PLANT_SLOWDOWN"


MAX_PLANTED = 10.0  # at most 10x extra work: a planted slowdown, not a stalled run


def planted_fractions() -> dict[str, float]:
    """mechanism -> the extra fraction ATTNBENCH_PLANT_SLOWDOWN asks for ({} when unset).

    UsageError (a ValueError) for a value that is not NAME:FRACTION, a fraction that is not a
    finite number in (0, MAX_PLANTED]. A run checks this, and that each name is a mechanism,
    before any work (``check_plant``): a typo is one line and exit 2, not a sweep of errors.
    """
    from attnbench.errors import UsageError

    text = os.environ.get(PLANT_ENV, "").strip()
    out: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, frac = item.rpartition(":")
        try:
            value = float(frac)
        except ValueError:
            value = math.nan
        if not sep or not name or not (math.isfinite(value) and 0 < value <= MAX_PLANTED):
            raise UsageError(f"{PLANT_ENV}={text!r}: expected NAME:FRACTION with a fraction "
                             f"above 0 and at most {MAX_PLANTED:g}, e.g. lightning2:0.10")
        out[name.strip()] = value
    return out


def check_plant() -> dict:
    """What a run's meta.json says of the hook: {"planted_slowdown": {name: fraction}}, or {}
    when it is off. UsageError for a bad value (before any work)."""
    from attnbench import registry

    fractions = planted_fractions()
    for name in fractions:
        registry.get(name)  # an unknown name: UsageError with the known ones
    return {"planted_slowdown": fractions} if fractions else {}


def _planted_fraction(mechanism: str) -> float:
    """The extra fraction ATTNBENCH_PLANT_SLOWDOWN asks for ``mechanism`` (0 if none)."""
    return planted_fractions().get(mechanism, 0.0)


def _min_seconds(fn: Callable[[], object], device: str, repeat: int = 7, inner: int = 1) -> float:
    """Fastest of ``repeat`` synchronised timings: least disturbed by other load."""
    times = []
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - start) / inner)
    return min(times)


def _cuda_sleep_cycles_per_ms() -> float:
    """GPU clock cycles ``torch.cuda._sleep`` spins per millisecond on this device."""
    import torch
    import triton.testing

    cycles = 2_000_000
    return cycles / triton.testing.do_bench(lambda: torch.cuda._sleep(cycles), return_mode="min")


def planted_slowdown(mechanism: str, call: Callable[[], object], device: str):
    """``call``, or ``call`` followed by busy work of about ``fraction`` of its time.

    On CUDA the busy work is one spin kernel (``torch.cuda._sleep``) on the same stream,
    lasting ``fraction`` of the call's median time by ``triton.testing.do_bench``, the
    harness's own timer: to every timer it looks exactly like the kernel becoming that
    much slower, and, like a real slowdown, it hides in idle GPU time when the call is
    bound by the host. On the CPU it is a square matmul repeated ``reps`` times, sized
    against the fastest of a few timed calls.
    """
    fraction = _planted_fraction(mechanism)
    if fraction <= 0:
        return call
    import torch

    call()  # first call (compilation) kept out of the calibration
    if device == "cuda":
        import triton.testing

        target_ms = fraction * triton.testing.do_bench(call, return_mode="median")
        cycles = max(1, round(target_ms * _cuda_sleep_cycles_per_ms()))
        print(f"attnbench: {PLANT_ENV} is set: {mechanism} gets a {target_ms:.3g} ms GPU spin "
              f"per call (~{fraction:.0%}); a test hook, not a real measurement",
              file=sys.stderr)

        def slowed():
            out = call()
            torch.cuda._sleep(cycles)
            return out

        slowed.planted = (1, cycles)  # for tests and debugging
        return slowed

    target = fraction * _min_seconds(call, device)
    size = 32
    while True:  # grow the matmul until one is a sizeable slice of the target, or 4096 wide
        a = torch.randn(size, size, device=device)
        one = _min_seconds(lambda a=a: a @ a, device, inner=10)
        if one >= target / 8 or size >= 4096:
            break
        size *= 2
    reps = max(1, round(target / one))
    print(f"attnbench: {PLANT_ENV} is set: {mechanism} gets {reps} extra {size}x{size} "
          f"matmuls per call (~{fraction:.0%}, {target * 1e3:.3g} ms); a test hook, not a "
          "real measurement", file=sys.stderr)

    def slowed():
        out = call()
        for _ in range(reps):
            a @ a
        return out

    slowed.planted = (reps, size)  # for tests and debugging
    return slowed
