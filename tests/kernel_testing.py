"""What tests/test_lightning1.py and tests/test_lightning2.py share: inputs, the oracle check.

Tolerance by comparison (FlashAttention's rule): a kernel's relative error
‖out - ref‖ / ‖ref‖ against the float64 oracle may be at most 2x the error of plain PyTorch
(``linear_masked``) run in the same dtype on the same inputs, plus a small floor. Without a
GPU the kernels run in Triton's interpreter on the CPU and the PyTorch baseline runs on the
CPU in that dtype (torch's CPU fp16 matmul rounds as the kernels do). bf16 needs the GPU:
the interpreter's bf16 tl.dot is wrong (triton 3.9).
"""

from __future__ import annotations

import torch
from attnbench.baselines.linear import linear_masked

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Floors under the 2x rule, for outputs where both errors are pure rounding noise.
FLOOR = {torch.float16: 1e-4, torch.bfloat16: 1e-3, torch.float32: 1e-6}
GRADS = ("o", "dq", "dk", "dv")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def inputs(b, h, n, d, e, dtype, device, seed=0):
    """Seeded q, k (B, H, N, D), v, do (B, H, N, E): made in fp32, then cast (never zeros)."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, n, d, generator=g) for _ in range(2))
    v = torch.randn(b, h, n, e, generator=g)
    do = torch.randn(b, h, n, e, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v, do)]


def forward_backward(fn, q, k, v, do, decay):
    """o and the gradients of <o, do> in q, k, v."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = fn(q, k, v, decay)
    o.backward(do)
    return o, q.grad, k.grad, v.grad


def case_id(c) -> str:
    b, h, n, d, e, dt, dec = c
    return f"B{b}-H{h}-N{n}-D{d}-E{e}-{dt}-{'decay' if dec else 'nodecay'}"


def check_against_oracle(fn, b, h, n, d, e, dtype, decay, device, seed=0):
    """fn's output and gradients vs float64 ``linear_masked`` by the 2x rule (``decay``: a
    float32 tensor (H,) on ``device``, or None)."""
    q, k, v, do = inputs(b, h, n, d, e, dtype, device, seed)
    ours = forward_backward(fn, q, k, v, do, decay)
    # Plain PyTorch in the kernel's dtype, on the kernel's device; the float64 oracle on the
    # CPU from the very same (already rounded) inputs.
    base = forward_backward(linear_masked, q, k, v, do, decay)
    dec64 = None if decay is None else decay.cpu().double()
    ref = forward_backward(linear_masked, *(t.cpu().double() for t in (q, k, v, do)), dec64)
    assert ours[0].dtype == dtype and ours[0].shape == (b, h, n, e)
    for name, mine, bl, exact in zip(GRADS, ours, base, ref, strict=True):
        assert mine.dtype == dtype and mine.shape == exact.shape, name
        assert torch.isfinite(mine).all(), f"{name}: non-finite values (unwritten output?)"
        err, base_err = rel_err(mine, exact), rel_err(bl, exact)
        bound = 2 * base_err + FLOOR[dtype]
        assert err <= bound, f"{name}: kernel error {err:.2e} > {bound:.2e} (torch {base_err:.2e})"


def chunked_reference(q, k, v, decay, initial_state=None, chunk=512):
    """``(o, final_state)`` by blocks in the inputs' dtype (float64: an oracle at any length
    in O(N) memory; differentiable). Same semantics as baselines.linear.linear_state."""
    b, h, n, d = q.shape
    s = torch.zeros(h, dtype=q.dtype, device=q.device) if decay is None else decay.to(q)
    lam = torch.exp(-s).view(1, h, 1, 1)
    state = q.new_zeros(b, h, d, v.shape[-1]) if initial_state is None else initial_state.to(q)
    out = []
    for st in range(0, n, chunk):
        qc, kc, vc = (t[:, :, st : st + chunk] for t in (q, k, v))
        c = qc.shape[2]
        i = torch.arange(c, device=q.device, dtype=q.dtype)
        dist = i[:, None] - i[None, :]
        m = torch.where(dist >= 0, lam ** dist.clamp(min=0), 0.0)  # [1, H, c, c]
        out.append((qc @ kc.transpose(-1, -2) * m) @ vc + (qc * lam ** (i + 1)[:, None]) @ state)
        state = lam**c * state + (kc * lam ** (c - 1 - i)[:, None]).transpose(-1, -2) @ vc
    return torch.cat(out, dim=2), state
