"""Tests for kernels/lightning1.py against the float64 oracle in baselines/linear.py.

The 2x rule and the shared helpers: tests/kernel_testing.py. Without a GPU the kernels run
in Triton's interpreter (tests/conftest.py); bf16 is checked on the GPU only.
"""

import re

import pytest
import torch
from attnbench.kernels import lightning1
from attnbench.kernels.lightning1 import lightning_attn1
from conftest import KERNEL_DEVICE
from kernel_testing import DTYPES, case_id, check_against_oracle, inputs


def rates(h: int) -> torch.Tensor:
    """The paper's slopes s_h = 2^(-8h/H), h = 1..H, with one fast head (s = 3) added."""
    s = torch.tensor([2.0 ** (-8 * (i + 1) / h) for i in range(h)])
    s[0] = 3.0  # lambda^30 ~ 1e-39: weights underflow inside a few tiles
    return s


CASES = [
    # B, H, N, D, E, dtype, decay
    (1, 1, 1, 16, 16, "fp32", True),
    (1, 2, 1, 16, 48, "fp16", False),
    (2, 3, 17, 48, 48, "fp16", True),
    (1, 2, 77, 48, 96, "fp16", True),
    (2, 3, 77, 48, 48, "fp32", False),
    (2, 2, 130, 64, 64, "fp16", False),
    (1, 2, 130, 96, 64, "fp32", True),
    (1, 1, 77, 128, 128, "fp16", True),
    (1, 2, 40, 192, 192, "fp16", True),
    (1, 1, 33, 192, 16, "fp32", False),
    (1, 1, 50, 256, 256, "fp32", True),
    (1, 1, 17, 16, 256, "fp16", False),
]


def _check(case, device):
    b, h, n, d, e, dt, dec = case
    decay = rates(h).to(device) if dec else None
    check_against_oracle(lightning_attn1, b, h, n, d, e, DTYPES[dt], decay, device)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_backward_against_oracle(case):
    _check(case, KERNEL_DEVICE)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "case", [(2, 3, 77, 48, 96, "bf16", True), (1, 2, 300, 128, 128, "bf16", False),
             (1, 2, 1000, 64, 64, "bf16", True)], ids=case_id,
)
def test_bf16_against_oracle(case):
    _check(case, "cuda")


def test_zero_decay_equals_no_decay():
    q, k, v, _ = inputs(1, 2, 40, 32, 32, torch.float32, KERNEL_DEVICE)
    zero = torch.zeros(2, device=KERNEL_DEVICE)
    torch.testing.assert_close(lightning_attn1(q, k, v, zero), lightning_attn1(q, k, v))


@pytest.mark.gpu
def test_a_sweep_over_lengths_compiles_each_kernel_once():
    """N is a runtime argument: once the first length has compiled (and autotuned) the
    kernels, other lengths, odd or even, reuse them (a constexpr N would compile anew)."""
    kernels = (lightning1._lightning1_fwd_kernel.fn, lightning1._lightning1_bwd_dkdv_kernel.fn)

    def compiled() -> int:
        # triton's JITFunction: per device (kernel cache, key cache, target, backend, binder)
        return sum(len(caches[0]) for k in kernels for caches in k.device_caches.values())

    def step(n):
        q, k, v, _ = (t.requires_grad_() for t in inputs(1, 2, n, 64, 64, torch.float16, "cuda"))
        lightning_attn1(q, k, v, rates(2).cuda()).sum().backward()

    step(256)
    first = compiled()
    for n in (257, 1000, 4096):
        step(n)
    assert first > 0 and compiled() == first


def _bad_inputs():
    dev = KERNEL_DEVICE
    r = lambda *s, dt=torch.float32: torch.randn(*s, device=dev).to(dt)
    good = r(1, 2, 8, 16)
    cases = {
        "D-too-small": ((r(1, 2, 8, 8), r(1, 2, 8, 8), r(1, 2, 8, 16), None), "head dim D"),
        "D-too-large": ((r(1, 1, 8, 257), r(1, 1, 8, 257), r(1, 1, 8, 16), None), "head dim D"),
        "E-too-small": ((good, good, r(1, 2, 8, 8), None), "head dim E"),
        "E-too-large": ((good, good, r(1, 2, 8, 320), None), "head dim E"),
        "rank-3": ((r(2, 8, 16), r(2, 8, 16), r(2, 8, 16), None), "4-D"),
        "grid-axis": ((r(1, 65536, 0, 16),) * 3 + (None,), "B * H must be at most 65535"),
        "k-shape": ((good, r(1, 2, 9, 16), r(1, 2, 8, 16), None), "expected q, k"),
        "v-shape": ((good, good, r(1, 3, 8, 16), None), "expected q, k"),
        "dtype-mismatch": ((good, good.half(), good, None), "one dtype"),
        "integer": ((good.int(), good.int(), good.int(), None), "dtype must be"),
        "float64": ((good.double(), good.double(), good.double(), None), "dtype must be"),
        "decay-shape": ((good, good, good, torch.ones(3, device=dev)), "shape (H,)"),
        "decay-int": ((good, good, good, torch.ones(2, dtype=torch.int64, device=dev)), "decay"),
        "not-a-tensor": ((good.tolist(), good, good, None), "torch.Tensor"),
    }
    if dev == "cpu":  # the sign of GPU rates is not read (that would sync the host)
        cases["negative-decay"] = ((good, good, good, torch.tensor([0.5, -1.0])), ">= 0")
    return cases


@pytest.mark.parametrize("name", list(_bad_inputs()))
def test_invalid_inputs_raise(name):
    args, message = _bad_inputs()[name]
    with pytest.raises(ValueError, match=re.escape(message)):
        lightning_attn1(*args)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setattr(lightning1, "_interpreted", lambda: False)
    x = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match="CUDA"):
        lightning_attn1(x, x, x)


@pytest.mark.gpu
def test_device_mismatch_raises():
    x = torch.randn(1, 1, 4, 16, device="cuda")
    with pytest.raises(ValueError, match="one device"):
        lightning_attn1(x, x.cpu(), x)
    with pytest.raises(ValueError, match="decay must be on"):
        lightning_attn1(x, x, x, torch.ones(1))


class _FakeCudaTensor:
    """What the tuner's prune reads of q: its device and its element size."""

    def __init__(self, element_size: int):
        self.device = torch.device("cuda", 0)
        self._element_size = element_size

    def element_size(self) -> int:
        return self._element_size


@pytest.mark.parametrize("major, elt, width, tuned", [
    (9, 2, 128, False),  # Hopper, bf16, 128-wide heads: the sweep's winner, nothing to tune
    (8, 2, 128, True),  # an A100: not measured, the tuner chooses among the configs that fit
    (9, 2, 64, True),  # narrower heads: not measured either
    (9, 4, 128, True),  # fp32: the fallback (below), never the tensor-core configs
])
def test_the_tuner_runs_only_where_no_winner_was_measured(monkeypatch, major, elt, width,
                                                          tuned):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    args = {"q": _FakeCudaTensor(elt)}
    fwd = lightning1._prune_fwd(None, args, BLOCK_D=width, BLOCK_E=width)
    bwd = lightning1._prune_bwd(None, args, BLOCK_D=width, BLOCK_E=width)
    if elt == 4:
        assert (fwd, bwd) == (lightning1._FWD_FALLBACK, lightning1._BWD_FALLBACK)
    elif tuned:
        assert len(fwd) > 1 and len(bwd) > 1
    else:
        assert fwd == [lightning1._FWD_CONFIGS[0]] and bwd == [lightning1._BWD_CONFIGS[0]]
        assert (fwd[0].kwargs, fwd[0].num_warps, fwd[0].num_stages) == (
            {"BLOCK_M": 128, "BLOCK_N": 64}, 8, 3)
        assert (bwd[0].kwargs, bwd[0].num_warps, bwd[0].num_stages) == (
            {"BLOCK_M": 64, "BLOCK_N": 128}, 8, 3)
