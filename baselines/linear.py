"""Linear attention in plain PyTorch: the float64 oracles and the naive GPU baselines.

Semantics (per head h, decay rate s_h > 0, lambda_h = exp(-s_h); no softmax, no scale)::

    o_t = q_t · sum_{j<=t} lambda_h^(t-j) k_j^T v_j

``decay=None`` means lambda = 1. Shapes: q, k ``(B, H, N, D)``, v ``(B, H, N, E)``,
decay ``(H,)`` or None; the output is ``(B, H, N, E)``. Each function computes in its
inputs' dtype, so float64 inputs make it an oracle.

``linear_recurrent`` and ``linear_masked`` compute the same function two independent ways
(a token-by-token state recurrence and the full n x n decay mask); the tests check them
against each other before either is trusted as an oracle.
"""

from __future__ import annotations

import torch


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor | None):
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"expected q, k (B, H, N, D) and v (B, H, N, E); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if decay is not None and decay.shape != (q.shape[1],):
        raise ValueError(f"decay must have shape (H,) = ({q.shape[1]},); got {tuple(decay.shape)}")


def decay_mask(decay: torch.Tensor | None, n: int, dtype, device) -> torch.Tensor:
    """The causal decay mask M[h, i, j] = lambda_h^(i-j) for i >= j, else 0: ``(H, N, N)``."""
    idx = torch.arange(n, device=device)
    dist = (idx[:, None] - idx[None, :]).to(dtype)  # [N, N]
    causal = dist >= 0
    if decay is None:
        return causal.to(dtype).unsqueeze(0)  # [1, N, N]
    rates = decay.to(device=device, dtype=dtype).view(-1, 1, 1)  # [H, 1, 1]
    # Clamp before exp so the masked-out (negative distance) entries cannot overflow.
    return torch.where(causal, torch.exp(-rates * dist.clamp(min=0)), 0.0)


def linear_recurrent(q, k, v, decay=None):
    """Token-by-token state recurrence S_t = lambda S_{t-1} + k_t^T v_t, o_t = q_t S_t."""
    _check(q, k, v, decay)
    b, h, n, d = q.shape
    e = v.shape[-1]
    # The state is summed over the whole sequence: keep it in at least fp32, as any real
    # implementation does, so half-precision inputs are not judged by a bf16 running sum.
    acc = torch.promote_types(q.dtype, torch.float32)
    state = q.new_zeros(b, h, d, e, dtype=acc)  # [B, H, D, E]
    out = []
    for t in range(n):
        o, state = _step(q[:, :, t], k[:, :, t], v[:, :, t], state, decay)
        out.append(o)
    return torch.stack(out, dim=2).to(v.dtype) if out else v.new_empty(b, h, 0, e)


def _step(q, k, v, state, decay):
    """One token (q, k (B, H, D), v (B, H, E)) of the recurrence from ``state``, out of place
    (differentiable): (o (B, H, E) in the state's dtype, the next state)."""
    acc = state.dtype
    kv = k.to(acc)[..., :, None] * v.to(acc)[..., None, :]  # [B, H, D, E]
    if decay is not None:
        lam = torch.exp(-decay.to(device=state.device, dtype=acc)).view(1, -1, 1, 1)
        state = state * lam + kv
    else:
        state = state + kv
    return torch.einsum("bhd,bhde->bhe", q.to(acc), state), state


def linear_decode(q, k, v, state, decay=None):
    """One token of the recurrence, the state advanced IN PLACE: S <- lambda S + k^T v, then
    o = q S (the decode step; ``linear_recurrent`` is this, token after token).

    q, k ``(B, H, 1, D)``, v ``(B, H, 1, E)``, state ``(B, H, D, E)`` in the dtype the sum is
    kept in (float32 for half inputs; float64 inputs and state: the oracle). Returns o
    ``(B, H, 1, E)`` in v's dtype. Not differentiable through the state (inference).
    """
    _check(q, k, v, decay)
    o, new = _step(q[:, :, 0], k[:, :, 0], v[:, :, 0], state, decay)
    state.copy_(new)
    return o.unsqueeze(2).to(v.dtype)


def linear_masked(q, k, v, decay=None):
    """The paper's "Vanilla" form (Q K^T * M) V with the full n x n decay mask: O(n^2) memory."""
    _check(q, k, v, decay)
    mask = decay_mask(decay, q.shape[2], q.dtype, q.device)  # [H or 1, N, N]
    scores = torch.matmul(q, k.transpose(-1, -2))  # [B, H, N, N]
    return torch.matmul(scores * mask, v)  # [B, H, N, E]


def linear_cumsum(q, k, v, decay=None):
    """Naive cumsum linear attention, no decay: every prefix state materialised, O(n·d·e) memory."""
    _check(q, k, v, decay)
    if decay is not None:
        raise ValueError("linear-cumsum has no decay (torch.cumsum cannot weight by lambda^(t-j))")
    kv = k.unsqueeze(-1) * v.unsqueeze(-2)  # [B, H, N, D, E]
    states = torch.cumsum(kv, dim=2)  # [B, H, N, D, E]
    return torch.einsum("bhnd,bhnde->bhne", q, states)  # [B, H, N, E]


def linear_state(q, k, v, decay=None, initial_state=None):
    """The masked form with states in and out: ``(o, final_state)``.

    o_t = q_t · (lambda^(t+1) S0 + sum_{j<=t} lambda^(t-j) k_j^T v_j) and
    S_N = lambda^N S0 + sum_j lambda^(N-1-j) k_j^T v_j, with S0 ``(B, H, D, E)`` (zeros if
    None). Computes in the inputs' dtype (float64 inputs: an oracle for chunked prefill).
    """
    _check(q, k, v, decay)
    h, n = q.shape[1], q.shape[2]
    t = torch.arange(n, device=q.device, dtype=q.dtype)
    if decay is None:
        row, key, total = (torch.ones(1, 1, n, 1, dtype=q.dtype, device=q.device),) * 2 + (1.0,)
    else:
        s = decay.to(device=q.device, dtype=q.dtype).view(1, h, 1, 1)  # [1, H, 1, 1]
        row = torch.exp(-s * (t + 1).view(1, 1, n, 1))  # lambda^(t+1), [1, H, N, 1]
        key = torch.exp(-s * (n - 1 - t).view(1, 1, n, 1))  # lambda^(N-1-j)
        total = torch.exp(-s * n)  # lambda^N, [1, H, 1, 1]
    o = linear_masked(q, k, v, decay)
    state = (k * key).transpose(-1, -2) @ v  # [B, H, D, E]
    if initial_state is not None:
        s0 = initial_state.to(q.dtype)
        o = o + (q * row) @ s0
        state = state + total * s0
    return o, state
