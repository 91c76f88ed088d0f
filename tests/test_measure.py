"""The timing helpers that run without a GPU (do_bench itself is exercised on the device)."""

import math

import pytest
import torch

from attnbench import measure


def test_host_ms_per_call_times_issuing_without_waiting(monkeypatch, fake_clock):
    syncs = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: syncs.append(1))
    calls = []

    def call():
        calls.append(1)
        fake_clock.sleep(0.002 if len(calls) <= 5 else 0.001)  # the second batch is faster

    host = measure.host_ms_per_call(call, calls=5, repeat=2)
    assert len(calls) == 10 and len(syncs) == 4  # a sync before and after each batch, not per call
    assert host == pytest.approx(1.0)  # ms per call of the fastest batch


def test_summary_is_median_and_quintiles():
    t = measure._summarise([5.0, 1.0, 2.0, 3.0, 4.0])
    assert (t.median_ms, t.reps) == (3.0, 5)
    assert t.p20_ms == pytest.approx(1.8) and t.p80_ms == pytest.approx(4.2)


@pytest.mark.parametrize("message, need", [
    ("CUDA out of memory. Tried to allocate 8.00 GiB. GPU 0 has a total capacity of 79.1 GiB",
     1000 + 8192),
    ("CUDA out of memory. Tried to allocate 512.00 MiB (GPU 0; 79.1 GiB total)", 1000 + 512),
    ("CUDA out of memory. Tried to allocate 2048.00 KiB", 1002),
    ("out of memory", float("nan")),  # no allocation named: not guessed
])
def test_an_oom_says_what_the_case_needed_at_least(monkeypatch, message, need):
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 1000 * 2**20)
    got = measure.oom_needed_mib(torch.cuda.OutOfMemoryError(message), "cuda")
    assert got == pytest.approx(need, nan_ok=True)
    assert math.isnan(measure.oom_needed_mib(torch.cuda.OutOfMemoryError(message), "cpu"))


def test_a_sweep_collects_what_each_case_leaves_and_only_that():
    import gc
    import weakref

    class Node:
        pass

    assert gc.get_freeze_count() == 0
    with measure.quiet_heap():
        kept = gc.get_freeze_count()
        assert kept > 0  # what existed before the sweep is out of the collector's sight
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle, as an autograd graph and its closure make
        gone = weakref.ref(a)
        del a, b
        measure.free_memory("cpu")
        assert gone() is None  # the case's garbage is collected
        assert gc.get_freeze_count() >= kept
        with measure.quiet_heap():  # nested (a sweep inside a sweep's process): no unfreeze
            pass
        assert gc.get_freeze_count() >= kept
    assert gc.get_freeze_count() == 0  # after the sweep, everything is collected as ever


class _FakeEvent:
    """A CUDA event that reads the fake clock when recorded (tests/conftest.py)."""

    def __init__(self, enable_timing=False):
        self.at = None

    def record(self):
        self.at = measure.clock()

    def elapsed_time(self, end):
        return (end.at - self.at) * 1e3


def test_a_long_call_is_timed_each_time_after_a_flush_without_do_bench(monkeypatch, fake_clock):
    import triton.testing

    monkeypatch.setattr(triton.testing, "do_bench", lambda *a, **k: pytest.fail("do_bench"))
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    log = []
    monkeypatch.setattr(measure, "l2_flusher", lambda: lambda: log.append("flush"))
    weight = torch.zeros(2, requires_grad=True)
    steps = iter([2.0, 1.0, 1.2, 1.1, 5.0, 1.3])

    def step():
        log.append("grad" if weight.grad is not None else "call")
        weight.grad = torch.ones(2)  # a training step leaves gradients behind
        fake_clock.sleep(next(steps))

    t = measure.time_cuda(step, [weight], estimate_ms=1500.0, min_reps=measure.LONG_CALL_REPS)
    assert log == ["flush", "call"] * measure.LONG_CALL_REPS  # gradients dropped before each
    assert t.reps == measure.LONG_CALL_REPS and t.median_ms == pytest.approx(1200.0)
    assert t.p80_ms < 5000.0  # the slow one is a spread, not the median


def test_a_budget_counts_the_calls_each_length_of_call_makes():
    short, long = measure.planned_calls(10.0), measure.planned_calls(measure.LONG_CALL_MS, 5)
    assert short == measure.MIN_REPS + 5  # do_bench's estimate, warm-up and repetitions
    assert long == 2 + measure.LONG_CALL_REPS  # first, estimate (and memory), the timed ones
    assert measure.planned_calls(measure.LONG_CALL_MS, min_reps=12) == 14


def test_the_estimate_call_measures_memory_above_what_was_there(monkeypatch, fake_clock):
    mib = 2**20
    state = {"allocated": 100 * mib, "peak": 100 * mib, "resets": 0}

    def reset():
        state["resets"] += 1
        state["peak"] = state["allocated"]

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: state["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: state["peak"])
    state["peak"] = 900 * mib  # an earlier call's peak, forgotten by the reset

    def call():
        state["peak"] = max(state["peak"], state["allocated"] + 30 * mib)
        fake_clock.sleep(0.25)

    peak, extra, seconds = measure.memory_and_seconds(call, "cuda")
    assert state["resets"] == 1 and (peak, extra) == (130.0, 30.0) and seconds == 0.25
    peak, extra, seconds = measure.memory_and_seconds(call, "cpu")
    assert math.isnan(peak) and math.isnan(extra) and seconds == 0.25
