"""Tests for kernels/common.py: the direct launcher, cached validation, pow2.

(The kernels' own tests exercise validation through their public functions; the launcher's
direct path needs a compiled kernel, so here it runs against test doubles.)
"""

import pytest
import torch
from attnbench.kernels import common


class FakeCompiled:
    function, packed_metadata = "function", "metadata"

    def __init__(self, fail=False):
        self.runs, self.fail = [], fail

    def run(self, *args):
        if self.fail:
            raise TypeError("launcher signature changed")
        self.runs.append(args)


class FakeKernel:
    """kernel[grid](*args, num_warps=, num_stages=) -> the compiled kernel, as Triton does."""

    def __init__(self, compiled):
        self.compiled, self.launches = compiled, []

    def __getitem__(self, grid):
        def launch(*args, num_warps, num_stages):
            self.launches.append((grid, args, num_warps, num_stages))
            return self.compiled

        return launch


def _launcher(monkeypatch, fail=False, hooks=False):
    kernel = FakeKernel(FakeCompiled(fail))
    launcher = common.Launcher(kernel)
    monkeypatch.setattr(launcher, "stream", lambda index: 1234)
    monkeypatch.setattr(common, "hooks_active", lambda: hooks)
    return launcher, kernel


def test_launcher_goes_direct_after_the_first_call(monkeypatch):
    launcher, kernel = _launcher(monkeypatch)
    args = ("q", "k", 7, True)
    launcher("key", (3, 1, 1), args, 4, 2, 0)
    launcher("key", (3, 1, 1), args, 4, 2, 0)
    assert len(kernel.launches) == 1 and (launcher.slow, launcher.fast) == (1, 1)
    assert kernel.compiled.runs == [(3, 1, 1, 1234, "function", "metadata", None, None, None,
                                     *args)]
    launcher("other key", (3, 1, 1), args, 4, 2, 0)  # a new variant: through Triton
    assert len(kernel.launches) == 2
    launcher("key", (3, 1, 1), args, 4, 2, 1)  # another device: its own load, through Triton
    assert len(kernel.launches) == 3


@pytest.mark.parametrize("why", ["unaligned", "hook", "interpreter"])
def test_launcher_uses_triton_when_it_must(monkeypatch, why):
    launcher, kernel = _launcher(monkeypatch, hooks=why == "hook")
    for _ in range(3):
        launcher("key", (1, 1, 1), (), 4, 2, None if why == "interpreter" else 0,
                 aligned=why != "unaligned")
    assert len(kernel.launches) == 3 and launcher.fast == 0 and not kernel.compiled.runs


def test_launcher_falls_back_for_good_when_the_direct_call_fails(monkeypatch):
    launcher, kernel = _launcher(monkeypatch, fail=True)
    for _ in range(3):
        launcher("key", (1, 1, 1), (), 4, 2, 0)
    assert len(kernel.launches) == 3
    assert launcher.disabled.startswith("TypeError: launcher signature changed")


def test_hooks_active_reads_triton_knobs(monkeypatch):
    rt = common.triton.knobs.runtime
    monkeypatch.setattr(rt, "launch_enter_hook", None)
    monkeypatch.setattr(rt, "launch_exit_hook", None)
    assert not common.hooks_active()
    monkeypatch.setattr(rt, "launch_enter_hook", lambda *a: None)
    assert common.hooks_active()


def test_validation_is_cached_but_rates_are_read_each_call():
    q = torch.randn(1, 2, 4, 16)
    common._VALID.clear()
    common.validate(q, q, q, torch.tensor([0.5, 0.0]), on_cpu=True)
    assert len(common._VALID) == 1
    common.validate(q, q, q, torch.tensor([0.5, 0.1]), on_cpu=True)
    assert len(common._VALID) == 1
    with pytest.raises(ValueError, match=">= 0"):
        common.validate(q, q, q, torch.tensor([0.5, -0.1]), on_cpu=True)
    with pytest.raises(ValueError, match="CUDA"):  # the device rule is part of the key
        common.validate(q, q, q, on_cpu=False)


@pytest.mark.parametrize("x", [1, 2, 3, 16, 17, 96, 128, 129, 192, 256])
def test_pow2(x):
    assert common.pow2(x) == common.triton.next_power_of_2(x)
