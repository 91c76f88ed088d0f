"""Tests for kernels/lightning2.py against the float64 oracle in baselines/linear.py.

Tolerance by comparison (FlashAttention's rule): the kernel's relative error against the
float64 oracle may be at most 2x the error of plain PyTorch (``linear_masked``) run in the
same dtype on the same inputs, plus a small floor. Without a GPU the kernel runs in
Triton's interpreter on the CPU and the PyTorch baseline runs on the CPU in that dtype
(CPU fp16 matmul is supported). bf16 needs the GPU: the interpreter's bf16 tl.dot is wrong.
"""

import pytest
import torch
from attnbench.baselines.linear import linear_masked, linear_recurrent
from attnbench.kernels import default_decay, lightning_attn2
from conftest import KERNEL_DEVICE

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Floors under the 2x rule, for tiny outputs where both errors are pure rounding noise.
FLOOR = {torch.float16: 1e-4, torch.bfloat16: 1e-3, torch.float32: 1e-6}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


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
    (2, 3, 77, 48, 48, "fp16", True),
    (2, 3, 77, 48, 48, "fp16", False),
    (1, 2, 1, 16, 16, "fp32", True),
    (1, 2, 1, 16, 16, "fp16", False),
    (1, 2, 17, 96, 64, "fp16", False),
    (2, 1, 130, 64, 192, "fp32", True),
    (1, 1, 130, 192, 96, "fp16", True),
    (1, 2, 64, 128, 128, "fp16", True),
    (1, 1, 40, 256, 256, "fp32", False),
    (1, 1, 33, 256, 48, "fp16", True),
]


def case_id(c):
    b, h, n, d, e, dt, dec = c
    return f"B{b}-H{h}-N{n}-D{d}-E{e}-{dt}-{'decay' if dec else 'nodecay'}"


def check_against_oracle(b, h, n, d, e, dtype, with_decay, device, seed=0):
    q, k, v, do = inputs(b, h, n, d, e, dtype, device, seed)
    decay = default_decay(h, device) if with_decay else None
    got = forward_backward(lightning_attn2, q, k, v, do, decay)
    # Baseline: plain PyTorch in the same dtype; oracle: float64 on the CPU.
    base = forward_backward(linear_masked, q, k, v, do, decay.to(dtype) if with_decay else None)
    ref = forward_backward(
        linear_masked,
        *(t.cpu().double() for t in (q, k, v, do)),
        decay.cpu().double() if with_decay else None,
    )
    for name, g, bl, r in zip(("o", "dq", "dk", "dv"), got, base, ref, strict=True):
        assert g.dtype == dtype and g.shape == r.shape, name
        assert torch.isfinite(g).all(), f"{name} has non-finite values"
        err, base_err = rel_err(g, r), rel_err(bl, r)
        bound = 2 * base_err + FLOOR[dtype]
        assert err <= bound, f"{name}: rel err {err:.3g} > {bound:.3g} (PyTorch {base_err:.3g})"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_matches_oracle(case):
    b, h, n, d, e, dt, dec = case
    check_against_oracle(b, h, n, d, e, DTYPES[dt], dec, KERNEL_DEVICE)


BF16_CASES = [
    (2, 3, 77, 48, 48, "bf16", True),
    (1, 2, 1000, 128, 128, "bf16", True),
    (1, 2, 1000, 128, 128, "bf16", False),
    (1, 1, 130, 192, 96, "bf16", True),
    (1, 1, 300, 256, 256, "bf16", False),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", BF16_CASES, ids=[case_id(c) for c in BF16_CASES])
def test_matches_oracle_bf16(case):
    b, h, n, d, e, dt, dec = case
    check_against_oracle(b, h, n, d, e, DTYPES[dt], dec, "cuda")


def test_oracles_agree():
    q, k, v, _ = inputs(2, 3, 21, 16, 24, torch.float64, "cpu")
    decay = default_decay(3).double()
    torch.testing.assert_close(linear_masked(q, k, v, decay), linear_recurrent(q, k, v, decay))


def test_noncontiguous_inputs():
    # (B, N, H, D) storage viewed as (B, H, N, D): strided along H and N.
    q, k, v, do = (t.transpose(1, 2) for t in inputs(2, 7, 3, 32, 32, torch.float32, KERNEL_DEVICE))
    assert not q.is_contiguous()
    decay = default_decay(3, KERNEL_DEVICE)
    got = forward_backward(lightning_attn2, q, k, v, do, decay)
    ref = forward_backward(lightning_attn2, *(t.contiguous() for t in (q, k, v, do)), decay)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r)


def test_strong_decay_stays_finite():
    # lambda^BLOCK underflows to 0 and the masked-out exponents would overflow: no NaN.
    q, k, v, do = inputs(1, 2, 70, 16, 16, torch.float32, KERNEL_DEVICE)
    decay = torch.tensor([30.0, 100.0], device=KERNEL_DEVICE)
    got = forward_backward(lightning_attn2, q, k, v, do, decay)
    ref = forward_backward(linear_masked, *(t.double() for t in (q, k, v, do)), decay.double())
    for g, r in zip(got, ref, strict=True):
        assert rel_err(g, r) < 1e-5


def test_default_decay():
    s = default_decay(8)
    assert s.shape == (8,) and s.dtype == torch.float32
    expected = torch.tensor([2.0 ** (-8 * h / 8) for h in range(1, 9)])
    torch.testing.assert_close(s, expected)
    with pytest.raises(ValueError, match="num_heads"):
        default_decay(0)


def _t(*shape, dtype=torch.float16, device=KERNEL_DEVICE):
    return torch.randn(*shape).to(device=device, dtype=dtype)


def _qkv(d=16, e=16, n=8, **kw):
    """q, k, v with one tensor changed: kw maps 'q'/'k'/'v' to a replacement tensor."""
    base = {"q": _t(1, 2, n, d), "k": _t(1, 2, n, d), "v": _t(1, 2, n, e)}
    base.update(kw)
    return base["q"], base["k"], base["v"]


F32, I32, F64 = torch.float32, torch.int32, torch.float64
BAD = {
    "rank": (lambda: _qkv(q=_t(2, 8, 16)), None, "4-D"),
    "k-shape": (lambda: _qkv(k=_t(1, 2, 9, 16)), None, "expected q, k"),
    "v-shape": (lambda: _qkv(v=_t(1, 3, 8, 16)), None, "expected q, k"),
    "D8": (lambda: _qkv(d=8), None, r"D must be in \[16, 256\]"),
    "D288": (lambda: _qkv(d=288, n=4), None, r"D must be in \[16, 256\]"),
    "E12": (lambda: _qkv(e=12), None, r"E must be in \[16, 256\]"),
    "E260": (lambda: _qkv(e=260, n=4), None, r"E must be in \[16, 256\]"),
    "N0": (lambda: _qkv(n=0), None, "must be >= 1"),
    "int32": (lambda: (torch.ones(1, 2, 8, 16, dtype=I32),) * 3, None, "float16, bfloat16"),
    "fp64": (lambda: (_t(1, 2, 8, 16, dtype=F64),) * 3, None, "float16, bfloat16"),
    "mixed-dtype": (lambda: _qkv(k=_t(1, 2, 8, 16, dtype=F32)), None, "share one dtype"),
    "mixed-device": (lambda: _qkv(v=_t(1, 2, 8, 16, device="meta")), None, "one device"),
    "decay-shape": (_qkv, lambda: torch.ones(3, device=KERNEL_DEVICE), r"shape \(H,\)"),
    "decay-int": (_qkv, lambda: torch.ones(2, dtype=I32, device=KERNEL_DEVICE), "floating"),
    "decay-device": (_qkv, lambda: torch.ones(2, device="meta"), "q's device"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_value_errors(name):
    make_qkv, make_decay, match = BAD[name]
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match=match):
        lightning_attn2(q, k, v, make_decay() if make_decay else None)


@pytest.mark.skipif(KERNEL_DEVICE != "cpu", reason="positivity is checked on CPU tensors only")
@pytest.mark.parametrize("rate", [0.0, -0.5])
def test_nonpositive_decay_rejected_on_cpu(rate):
    q = _t(1, 2, 8, 16)
    with pytest.raises(ValueError, match="> 0"):
        lightning_attn2(q, q, q, torch.tensor([0.5, rate]))


def test_cpu_tensors_rejected_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="CUDA"):
        lightning_attn2(q, q, q)
