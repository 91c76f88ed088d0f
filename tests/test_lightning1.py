"""Tests for kernels/lightning1.py against the float64 oracle in baselines/linear.py.

Tolerance by comparison (FlashAttention's rule): the kernel's relative error
‖out - ref‖ / ‖ref‖ against the float64 oracle may be at most 2x the error of plain PyTorch
(``linear_masked``) run in the same dtype on the same inputs, plus a small floor. Without a
GPU the kernel runs in Triton's interpreter on the CPU and the PyTorch baseline runs on the
CPU in that dtype: for fp16 that is torch's CPU fp16 matmul (output rounded to fp16, the
masked scores rounded to fp16 before the second product), the same roundings the kernel
makes, so the 2x rule holds there as on the GPU. bf16 needs the GPU: the interpreter's bf16
tl.dot is wrong in triton 3.9.
"""

import re

import pytest
import torch
from attnbench.baselines.linear import linear_masked
from attnbench.kernels import lightning1
from attnbench.kernels.lightning1 import lightning_attn1
from conftest import KERNEL_DEVICE

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Floors under the 2x rule, for outputs where both errors are pure rounding noise.
FLOOR = {torch.float16: 1e-4, torch.bfloat16: 1e-3, torch.float32: 1e-6}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def rates(h: int) -> torch.Tensor:
    """The paper's slopes s_h = 2^(-8h/H), h = 1..H, with one fast head (s = 3) added."""
    s = torch.tensor([2.0 ** (-8 * (i + 1) / h) for i in range(h)])
    s[0] = 3.0  # lambda^30 ~ 1e-39: weights underflow inside a few tiles
    return s


def inputs(b, h, n, d, e, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, n, d, generator=g) for _ in range(2))
    v = torch.randn(b, h, n, e, generator=g)
    do = torch.randn(b, h, n, e, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v, do)]


def forward_backward(fn, q, k, v, do, decay):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = fn(q, k, v, decay)
    o.backward(do)
    return o, q.grad, k.grad, v.grad


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


def case_id(c):
    b, h, n, d, e, dt, dec = c
    return f"B{b}-H{h}-N{n}-D{d}-E{e}-{dt}-{'decay' if dec else 'nodecay'}"


def check_against_oracle(b, h, n, d, e, dtype, with_decay, device):
    q, k, v, do = inputs(b, h, n, d, e, dtype, device)
    decay = rates(h).to(device) if with_decay else None
    dec64 = decay.double().cpu() if with_decay else None
    # Oracle: float64 on the CPU, from the very same (already rounded) inputs.
    ref = forward_backward(linear_masked, *(t.double().cpu() for t in (q, k, v, do)), dec64)
    # Plain PyTorch in the kernel's dtype, on the kernel's device, for the 2x rule.
    torch_out = forward_backward(linear_masked, q, k, v, do, decay)
    ours = forward_backward(lightning_attn1, q, k, v, do, decay)
    assert ours[0].dtype == dtype and ours[0].shape == (b, h, n, e)
    for name, mine, base, exact in zip(("o", "dq", "dk", "dv"), ours, torch_out, ref, strict=True):
        assert mine.shape == exact.shape, name
        assert torch.isfinite(mine).all(), f"{name}: non-finite values (unwritten output?)"
        err, base_err = rel_err(mine, exact), rel_err(base, exact)
        assert err <= 2 * base_err + FLOOR[dtype], (
            f"{name}: kernel error {err:.2e} > 2 x torch {base_err:.2e} + {FLOOR[dtype]:.0e}"
        )


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_backward_against_oracle(case):
    b, h, n, d, e, dt, dec = case
    check_against_oracle(b, h, n, d, e, DTYPES[dt], dec, KERNEL_DEVICE)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "case", [(2, 3, 77, 48, 96, "bf16", True), (1, 2, 300, 128, 128, "bf16", False),
             (1, 2, 1000, 64, 64, "bf16", True)], ids=case_id,
)
def test_bf16_against_oracle(case):
    b, h, n, d, e, dt, dec = case
    check_against_oracle(b, h, n, d, e, DTYPES[dt], dec, "cuda")


def test_zero_decay_equals_no_decay():
    q, k, v, _ = inputs(1, 2, 40, 32, 32, torch.float32, KERNEL_DEVICE)
    zero = torch.zeros(2, device=KERNEL_DEVICE)
    torch.testing.assert_close(lightning_attn1(q, k, v, zero), lightning_attn1(q, k, v))


def test_length_is_not_a_compile_time_constant():
    """N is a runtime argument: a sweep over lengths never recompiles."""
    for kernel in (lightning1._lightning1_fwd_kernel, lightning1._lightning1_bwd_dkdv_kernel):
        jit = kernel.fn  # under the autotuner
        names = getattr(jit, "kwargs", {}).get("do_not_specialize") or jit.do_not_specialize
        assert "N" in names


def _bad_inputs():
    dev = KERNEL_DEVICE
    r = lambda *s, dt=torch.float32: torch.randn(*s, device=dev).to(dt)
    good = r(1, 2, 8, 16)
    return {
        "D-too-small": ((r(1, 2, 8, 8), r(1, 2, 8, 8), r(1, 2, 8, 16), None), "head dim D"),
        "D-too-large": ((r(1, 1, 8, 257), r(1, 1, 8, 257), r(1, 1, 8, 16), None), "head dim D"),
        "E-too-small": ((good, good, r(1, 2, 8, 8), None), "head dim E"),
        "E-too-large": ((good, good, r(1, 2, 8, 320), None), "head dim E"),
        "rank-3": ((r(2, 8, 16), r(2, 8, 16), r(2, 8, 16), None), "4 dims"),
        "k-shape": ((good, r(1, 2, 9, 16), r(1, 2, 8, 16), None), "expected q, k"),
        "v-shape": ((good, good, r(1, 3, 8, 16), None), "expected q, k"),
        "dtype-mismatch": ((good, good.half(), good, None), "one dtype"),
        "integer": ((good.int(), good.int(), good.int(), None), "dtype must be"),
        "float64": ((good.double(), good.double(), good.double(), None), "dtype must be"),
        "decay-shape": ((good, good, good, torch.ones(3, device=dev)), "shape (H,)"),
        "decay-int": ((good, good, good, torch.ones(2, dtype=torch.int64, device=dev)), "decay"),
        "not-a-tensor": ((good.tolist(), good, good, None), "torch.Tensor"),
    }


@pytest.mark.parametrize("name", list(_bad_inputs()))
def test_invalid_inputs_raise(name):
    args, message = _bad_inputs()[name]
    with pytest.raises(ValueError, match=re.escape(message)):
        lightning_attn1(*args)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setattr(lightning1, "_interpreted", lambda: False)
    x = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        lightning_attn1(x, x, x)


@pytest.mark.gpu
def test_device_mismatch_raises():
    x = torch.randn(1, 1, 4, 16, device="cuda")
    with pytest.raises(ValueError, match="one device"):
        lightning_attn1(x, x.cpu(), x)
    with pytest.raises(ValueError, match="decay must be on"):
        lightning_attn1(x, x, x, torch.ones(1))
