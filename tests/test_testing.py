"""The planted-slowdown test hook (attnbench/testing.py)."""

import math

import pytest
import torch
from fakes import make_case

from attnbench import modes, registry, runner, testing


def test_plant_env_is_read_at_call_time(monkeypatch):
    monkeypatch.delenv(testing.PLANT_ENV, raising=False)
    assert testing._planted_fraction("lightning2") == 0.0
    monkeypatch.setenv(testing.PLANT_ENV, "linear-masked:0.2, lightning2:0.10")
    assert testing._planted_fraction("lightning2") == pytest.approx(0.10)
    assert testing._planted_fraction("linear-masked") == pytest.approx(0.2)
    assert testing._planted_fraction("sdpa-math") == 0.0
    call = lambda: None
    assert testing.planted_slowdown("sdpa-math", call, "cpu") is call


@pytest.mark.parametrize("bad", ["lightning2", "lightning2:x", ":0.1", "lightning2:-1"])
def test_plant_env_malformed(monkeypatch, bad):
    monkeypatch.setenv(testing.PLANT_ENV, bad)
    with pytest.raises(ValueError, match="NAME:FRACTION"):
        testing._planted_fraction("lightning2")


def test_planted_slowdown_sizes_busy_work_from_the_measured_time(monkeypatch, capsys):
    # Fake timings (real ones are at the mercy of a shared CPU): one call takes 1 ms, a
    # matmul 1 us at 32 wide and 8x longer per doubling.
    def fake_min_seconds(fn, device, repeat=7, inner=1):
        if fn is call:
            return 1e-3
        return 1e-6 * 8 ** math.log2(fn.__defaults__[0].shape[0] / 32)

    calls = []
    call = lambda: calls.append(1)
    monkeypatch.setattr(testing, "_min_seconds", fake_min_seconds)
    monkeypatch.setenv(testing.PLANT_ENV, "mech:0.10")
    slowed = testing.planted_slowdown("mech", call, "cpu")
    assert "test hook" in capsys.readouterr().err
    # target 0.1 ms; 128 wide = 64 us >= target / 8, so 2 of them (~0.128 ms)
    assert slowed.planted == (2, 128)
    calls.clear()
    slowed()
    assert calls == [1]


def test_planted_slowdown_on_cuda_is_one_spin_of_the_fraction(monkeypatch, capsys):
    # No GPU here: do_bench and the spin kernel are stand-ins, the sizing is the real code.
    import triton.testing

    spins = []
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, return_mode: 2.0)  # 2 ms calls
    monkeypatch.setattr(testing, "_cuda_sleep_cycles_per_ms", lambda: 1.5e6)  # a 1.5 GHz clock
    monkeypatch.setattr(torch.cuda, "_sleep", spins.append)
    monkeypatch.setenv(testing.PLANT_ENV, "mech:0.10")
    slowed = testing.planted_slowdown("mech", lambda: "out", "cuda")
    assert slowed.planted == (1, 300_000)  # 0.2 ms at 1.5e6 cycles per ms
    assert slowed() == "out" and spins == [300_000]
    assert "0.2 ms GPU spin" in capsys.readouterr().err


def test_planted_slowdown_adds_its_matmuls_to_a_real_call(monkeypatch):
    from torch.overrides import TorchFunctionMode

    x = torch.randn(256, 256)
    call = lambda: x @ x
    monkeypatch.setenv(testing.PLANT_ENV, "mech:1.0")
    slowed = testing.planted_slowdown("mech", call, "cpu")
    reps, size = slowed.planted
    seen = []

    class Matmuls(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if "matmul" in getattr(func, "__name__", ""):
                seen.append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    with Matmuls():
        out = slowed()
    torch.testing.assert_close(out, x @ x)  # the call's own result, unchanged
    assert seen == [(256, 256)] + [(size, size)] * reps  # then the planted work, every call


def test_measure_case_goes_through_the_hook(monkeypatch):
    seen = []

    def spy(name, call, device):
        def counted():
            seen.append(name)
            return call()
        return counted

    monkeypatch.setattr(modes, "planted_slowdown", spy)
    mech = registry.get("linear-masked")
    case = make_case(mech.name, "bwd", 1, 2, 64, 16)
    values = runner.measure_case(mech, mech.callable(), case, "cpu", 10.0)
    assert values["status"] == "ok"
    assert len(seen) >= values["reps"] and set(seen) == {mech.name}
