"""Time every mechanism on the fixed grid (conftest.GRID) with pytest-benchmark.

pytest-benchmark gates on time (``--benchmark-compare-fail=median:5%``); tokens/s, TFLOP/s
and peak memory go in ``extra_info`` for the record (pytest-benchmark cannot gate on them:
``attnbench compare`` does, see benchmarks/README.md).
"""

import pytest

from attnbench import measure


def test_mechanism(benchmark, case, timed_call, grid):
    device = grid["device"]
    tc = timed_call(case)
    compile_s = measure.first_call_seconds(tc.call, device)  # compilation, autotuning
    tc.reset_grads()
    one_s = measure.first_call_seconds(tc.call, device)
    if one_s > grid["max_call_s"]:
        pytest.skip(f"one call takes {one_s:.2f} s (> {grid['max_call_s']} s): too slow here")
    rounds = int(min(grid["max_rounds"], max(grid["min_rounds"], grid["budget_s"] / one_s)))

    def target():
        tc.call()
        measure.synchronize(device)

    benchmark.group = f"{case.mode} N={case.seq_len}"
    benchmark.pedantic(target, setup=tc.reset_grads, rounds=rounds, warmup_rounds=2,
                       iterations=1)

    tc.reset_grads()
    peak, extra = measure.peak_memory_mib(tc.call, device)
    info = dict(case.to_row(), device=device, compile_s=compile_s,
                peak_mem_mib=None if peak != peak else peak,  # NaN (CPU) is not JSON
                extra_mem_mib=None if extra != extra else extra)
    if tc.mechanism.impl_of is not None:
        info["impl"] = tc.mechanism.impl_of(case)
    if benchmark.stats is not None:  # None under --benchmark-disable
        median_s = benchmark.stats.stats.median
        info["tokens_per_s"] = case.tokens / median_s
        info["tflops"] = tc.flops / median_s / 1e12
    benchmark.extra_info.update(info)
