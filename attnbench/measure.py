"""Timing and memory of one call, done by the libraries that already do it well.

CUDA: ``triton.testing.do_bench`` (CUDA events, L2 flushed before every repetition, warm-up
first, gradients reset), median and p20/p80 of the repetitions. CPU:
``torch.utils.benchmark.Timer.blocked_autorange``. The first call (compilation, autotuning,
lazy initialisation) is timed on its own and never mixed into the repetitions.

On CUDA we also time how long the host takes to issue one call (``host_ms_per_call``): a
call the host issues no faster than the GPU runs it leaves the GPU waiting, so its time is
the host's (Python, launch work), which changes with the CPU and from process to process.
"""

from __future__ import annotations

import contextlib
import gc
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

# The clock every host-side time here is read from (first calls, host issue time, CPU
# timing, a sweep's line budget): a test puts a fake one in its place, so that rules about
# time give the same verdict however busy the machine is.
clock = time.perf_counter
MIB = 1024.0 * 1024.0
MIN_REPS = 10  # at least this many timed repetitions, however long one call takes
WARMUP_MS, REP_MS = 25.0, 100.0  # do_bench's defaults, raised for slow calls (below)
# From half a second a call on (a training step: 1.5 to 20 s), do_bench's fixed 5-call estimate
# and its warm-up would double a case's work for nothing: the case's first two calls already
# compiled, warmed and estimated it. Such calls are timed LONG_CALL_REPS times, each after an
# L2 flush, as do_bench times its repetitions (time_long_cuda). Steps vary by well under 1%.
LONG_CALL_MS = 500.0
LONG_CALL_REPS = 5
HOST_PROBE_MAX_MS = 2.0  # calls longer than this are not probed: no launch work is that slow
# From this ratio of the host's time to issue a call to its GPU time on, host jitter shows in
# the time. The L2 flush before each do_bench repetition gives the host a head start.
HOST_BOUND_FRACTION = 0.8


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


_quiet_heap = False  # inside quiet_heap(): each free_memory freezes what survives it


@contextlib.contextmanager
def quiet_heap() -> Iterator[None]:
    """A sweep: objects that survive a full collection are frozen (``gc.freeze``) until it
    ends, so that the collection after each case scans only what the case made. With torch,
    triton and pandas loaded a full collection walks ~300k objects (0.1-0.4 s a case: 6.7 s of
    a 43 s first run on the H100). What a case leaves is garbage by then, and is collected."""
    global _quiet_heap
    outer = _quiet_heap
    gc.collect()
    gc.freeze()
    _quiet_heap = True
    try:
        yield
    finally:
        _quiet_heap = outer
        if not outer:
            gc.unfreeze()  # back to the oldest generation: collected as ever after the sweep


def free_memory(device: str) -> None:
    """Drop what the last case left: Python garbage, and the allocator's cached blocks."""
    gc.collect()
    if _quiet_heap:
        gc.freeze()
    if device == "cuda":
        try:
            torch.cuda.empty_cache()
        except Exception:  # a lost context: the case's record says so, then the sweep stops
            pass


def first_call_seconds(fn: Callable[[], object], device: str) -> float:
    """Wall time of one synchronised call: for the first call, compilation and autotuning."""
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


def planned_calls(call_ms: float, min_reps: int = 1) -> int:
    """About the calls a case makes when one takes ``call_ms``, what a time budget is checked
    against: its first two (compilation; the estimate, which measures memory too) and the
    timed ones (do_bench's estimate and warm-up besides, for short calls)."""
    if call_ms >= LONG_CALL_MS:
        return 2 + max(min_reps, LONG_CALL_REPS)
    return max(min_reps, MIN_REPS) + 5


def time_cuda(fn: Callable[[], object], grad_to_none: list[torch.Tensor],
              estimate_ms: float, min_reps: int = 1) -> Timing:
    """do_bench with enough repetitions for a spread: MIN_REPS planned, L2 flushed each time;
    never fewer than ``min_reps`` (do_bench plans its count from its own estimate, which can
    come out longer than ours: then it is asked again for the rest). Calls of LONG_CALL_MS or
    more: ``time_long_cuda``."""
    import triton.testing

    if estimate_ms >= LONG_CALL_MS:
        return _summarise(time_long_cuda(fn, grad_to_none, max(min_reps, LONG_CALL_REPS)))

    def bench(reps: int) -> list[float]:
        return triton.testing.do_bench(
            fn, warmup=max(WARMUP_MS, 2 * estimate_ms), rep=max(REP_MS, reps * estimate_ms),
            grad_to_none=grad_to_none, return_mode="all")

    times = list(bench(MIN_REPS))
    while len(times) < min_reps:
        times += bench(min_reps - len(times))
    return _summarise(times)


def l2_flusher() -> Callable[[], None]:
    """What do_bench runs before each repetition: a write over a buffer larger than the L2."""
    from triton import runtime

    driver = runtime.driver.active
    buffer = driver.get_empty_cache_for_benchmark()
    return lambda: driver.clear_cache(buffer)


def time_long_cuda(fn: Callable[[], object], grad_to_none: list[torch.Tensor],
                   reps: int) -> list[float]:
    """``reps`` calls, each between CUDA events after the L2 flush and with the gradients of
    ``grad_to_none`` dropped, as do_bench's repetitions (ms); the caller has warmed ``fn``."""
    flush = l2_flusher()
    events = []
    for _ in range(reps):
        for x in grad_to_none:
            x.grad = None
        flush()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def host_ms_per_call(fn: Callable[[], object], calls: int = 10, repeat: int = 3) -> float:
    """Host wall time to issue one call without waiting for the GPU (fastest of ``repeat``).

    Close to the GPU time means the host sets the pace (or the call synchronises inside).
    """
    best = float("inf")
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = clock()
        for _ in range(calls):
            fn()
        best = min(best, (clock() - start) / calls)
        torch.cuda.synchronize()
    return best * 1e3


def host_bound(host_ms: float, time_ms: float) -> bool:
    """The host took HOST_BOUND_FRACTION or more of the GPU time to issue one call."""
    return host_ms is not None and not math.isnan(host_ms) and (
        host_ms >= HOST_BOUND_FRACTION * time_ms)


def time_cpu(fn: Callable[[], object], min_run_time: float = 0.2, min_reps: int = 1) -> Timing:
    """torch.utils.benchmark: per-block means, blocks sized automatically; at least
    ``min_reps`` blocks (calls so slow that ``min_run_time`` holds fewer get more blocks)."""
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads(),
                  timer=lambda: clock())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    times = [t * 1e3 for t in m.times]
    while len(times) < min_reps:
        times.append(timer.timeit(m.number_per_run).times[0] * 1e3)
    return _summarise(times)


def _summarise(times_ms: list[float]) -> Timing:
    arr = np.asarray(times_ms, dtype=np.float64)
    p20, p50, p80 = np.quantile(arr, [0.2, 0.5, 0.8])
    return Timing(float(p50), float(p20), float(p80), len(arr))


def peak_memory_mib(fn: Callable[[], object], device: str) -> tuple[float, float]:
    """(peak allocated during one call, the part of it above what was allocated before).

    On the CPU torch keeps no allocator statistics: both are NaN.
    """
    peak, extra, _ = memory_and_seconds(fn, device)
    return peak, extra


def memory_and_seconds(fn: Callable[[], object], device: str) -> tuple[float, float, float]:
    """One synchronised call's peak memory and the part above what was allocated before (MiB,
    NaN on the CPU, as ``peak_memory_mib``), and its wall time (s): a case's second call, its
    estimate, measures its memory too."""
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else math.nan
    start = clock()
    fn()
    synchronize(device)
    seconds = clock() - start
    peak = torch.cuda.max_memory_allocated() if cuda else math.nan
    return peak / MIB, (peak - before) / MIB, seconds


def available_bytes(device: str) -> float | None:
    """Memory a case can still take: free GPU memory plus what torch's allocator holds
    unused; on the CPU the kernel's MemAvailable. None where it cannot be told."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return float(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def is_oom(exc: BaseException) -> bool:
    """Out of memory, on the GPU or the host, whatever raised it."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return "out of memory" in text.lower() or "can't allocate memory" in text


_TRIED = re.compile(r"Tried to allocate ([\d.]+) (GiB|MiB|KiB|B)\b")
_UNIT_MIB = {"GiB": 1024.0, "MiB": 1.0, "KiB": 1 / 1024, "B": 1 / MIB}


def oom_needed_mib(exc: BaseException, device: str) -> float:
    """What a case that ran out of GPU memory needed at least, MiB: the peak allocated since
    the case started (``reset_peak_memory_stats`` then) plus the allocation that failed, as
    PyTorch's message gives it. NaN on the CPU, or where the message names no allocation."""
    match = _TRIED.search(str(exc))
    if device != "cuda" or match is None:
        return float("nan")
    peak = torch.cuda.max_memory_allocated() / MIB
    return peak + float(match.group(1)) * _UNIT_MIB[match.group(2)]
