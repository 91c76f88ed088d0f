"""The timing helpers that run without a GPU (do_bench itself is exercised on the device)."""

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
