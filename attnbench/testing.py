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

import os
import sys
import time
from collections.abc import Callable

from attnbench.measure import synchronize

PLANT_ENV = "ATTNBENCH_PLANT_SLOWDOWN"


def _planted_fraction(mechanism: str) -> float:
    """The extra fraction ATTNBENCH_PLANT_SLOWDOWN asks for ``mechanism`` (0 if none)."""
    text = os.environ.get(PLANT_ENV, "").strip()
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, frac = item.rpartition(":")
        try:
            value = float(frac)
        except ValueError:
            value = -1.0
        if not sep or not name or value < 0:
            raise ValueError(f"{PLANT_ENV}={text!r}: expected NAME:FRACTION, e.g. lightning2:0.10")
        if name == mechanism:
            return value
    return 0.0


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
