"""Lightning Attention-2's decode step in Triton: one new token per sequence, state in place.

Per head h, with lambda_h = exp(-decay[h]) (no softmax, no scale) and the float32 state
S (D, E) of the context already processed::

    S <- lambda_h S + k^T v        (written back in place)
    o  = q S                       (the state after the new token, as lightning_attn2)

This is token N of ``lightning_attn2`` continued from its final state: a state from
``lightning_attn2(..., output_final_state=True)`` continues here, and the state after any
number of steps continues in ``lightning_attn2(..., initial_state=state)``. The state does
not grow with the context: a step reads and writes B x H x D x E x 4 bytes, whatever N.

``_lightning2_decode_kernel``: one program per (batch, head, E-slice); it walks the D rows
of its slice of the state in chunks of BLOCK_D (load, decay, add k^T v, store, accumulate
q S), so each state element is read once and written once, and the E-slices of a head
never need each other (no atomics, no second pass). The slice width is chosen so that the
grid holds a few programs per SM even at batch 1 (``_decode_config``).

Host side: the validation and launch settings of a call are cached by its shapes, strides,
dtypes and device; after the first call the compiled kernel is launched directly
(``common.Launcher``): a decode step is microseconds, so issuing it must cost little.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    LOG2E,
    Launcher,
    aligned,
    check_inputs,
    check_rates,
    input_key,
    interpreted,
    pow2,
)
from .lightning2 import sm_count

__all__ = ["lightning_attn2_decode"]


@triton.jit
def _lightning2_decode_kernel(
    q,  # (B, H, 1, D): batch SQB, head SQH elements apart, the D elements contiguous
    k,  # (B, H, 1, D): SKB, SKH
    v,  # (B, H, 1, E): SVB, SVH
    o,  # (B, H, 1, E): SOB, SOH, written in o's dtype
    state,  # (B, H, D, E) float32, contiguous, read and written in place
    decay,  # [H] float32 decay rates (unused without HAS_DECAY)
    H: tl.constexpr,
    D: tl.constexpr,
    E: tl.constexpr,
    SQB: tl.constexpr,
    SQH: tl.constexpr,
    SKB: tl.constexpr,
    SKH: tl.constexpr,
    SVB: tl.constexpr,
    SVH: tl.constexpr,
    SOB: tl.constexpr,
    SOH: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_E: tl.constexpr,
    NUM_E: tl.constexpr,
    HAS_DECAY: tl.constexpr,
):
    """S[:, slice] <- lambda S[:, slice] + k^T v[slice]; o[slice] = q S[:, slice]."""
    # One grid axis (no 65535 limit), ordered (head, E-slice): the slices of a head are
    # neighbours and share their q and k reads through L2.
    i_bh, i_e = tl.program_id(0) // NUM_E, tl.program_id(0) % NUM_E
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H  # strides of a view may pass 2^31
    o_e = i_e * BLOCK_E + tl.arange(0, BLOCK_E)
    m_e = o_e < E
    b_v = tl.load(v + i_b * SVB + i_h * SVH + o_e, mask=m_e, other=0.0).to(tl.float32)  # [BLOCK_E]
    if HAS_DECAY:
        b_lam = tl.exp2(-tl.load(decay + i_h).to(tl.float32) * LOG2E)
    p_s = state + i_bh.to(tl.int64) * D * E
    b_o = tl.zeros([BLOCK_E], dtype=tl.float32)
    for i_d in range(0, D, BLOCK_D):
        o_d = i_d + tl.arange(0, BLOCK_D)
        m_d = o_d < D
        b_q = tl.load(q + i_b * SQB + i_h * SQH + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_k = tl.load(k + i_b * SKB + i_h * SKH + o_d, mask=m_d, other=0.0).to(tl.float32)
        p = p_s + o_d[:, None] * E + o_e[None, :]
        m = m_d[:, None] & m_e[None, :]
        b_s = tl.load(p, mask=m, other=0.0)  # [BLOCK_D, BLOCK_E] fp32
        if HAS_DECAY:
            b_s = b_s * b_lam
        b_s += b_k[:, None] * b_v[None, :]
        tl.store(p, b_s, mask=m)
        b_o += tl.sum(b_q[:, None] * b_s, axis=0)  # [BLOCK_E]
    tl.store(o + i_b * SOB + i_h * SOH + o_e, b_o.to(o.dtype.element_ty), mask=m_e)


_DECODE = Launcher(_lightning2_decode_kernel)
# Programs per SM the slice width aims at (narrower slices where B x H is small), and the
# narrowest slice: below 16 fp32 columns (64 bytes) a row of the state is read in pieces
# too small for full memory transactions.
PROGRAMS_PER_SM = 4
MIN_BLOCK_E = 16
TILE = 4096  # state elements per chunk of a program (16 KiB): 32 a thread at 4 warps


def _decode_config(b: int, h: int, d: int, e: int, sms: int, config: dict | None) -> dict:
    """BLOCK_E (the E-slice of a program), BLOCK_D (rows per chunk), num_warps.

    The widest slice up to 64 columns that still gives PROGRAMS_PER_SM programs per SM, at
    least MIN_BLOCK_E; chunks of TILE elements. ``config`` overrides any of them (tuning).
    """
    block_e = min(64, pow2(e))
    while block_e > MIN_BLOCK_E and b * h * -(-e // block_e) < PROGRAMS_PER_SM * sms:
        block_e //= 2
    cfg = dict(BLOCK_E=block_e, BLOCK_D=min(pow2(d), max(1, TILE // block_e)), num_warps=4)
    cfg.update({key: val for key, val in (config or {}).items() if key in cfg})
    cfg["NUM_E"] = -(-e // cfg["BLOCK_E"])
    return cfg


def _check(q, k, v, state, decay) -> None:
    """Every limit of a step: one token, then ``lightning_attn2``'s own checks with the state
    as its initial state (shape, float32, device), and the state contiguous; ValueError with
    one clear line."""
    tokens = all(isinstance(t, torch.Tensor) for t in (q, k, v))
    if tokens and (q.dim() != 4 or q.shape[2] != 1 or k.shape != q.shape or v.dim() != 4
                   or v.shape[:3] != q.shape[:3]):
        raise ValueError(f"expected q, k (B, H, 1, D) and v (B, H, 1, E): one token; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not isinstance(state, torch.Tensor):
        raise ValueError(f"state must be a torch.Tensor; got {type(state).__name__}")
    check_inputs(q, k, v, decay, state, on_cpu=_ON_CPU)
    if not state.is_contiguous():
        raise ValueError("state must be contiguous (B, H, D, E)")


def lightning_attn2_decode(q, k, v, state, decay=None, *, _config=None):
    """One decode step of Lightning Attention-2: the state advanced by one token IN PLACE,
    the token's output returned.

    Per head h, lambda_h = exp(-decay[h]): ``state <- lambda_h state + k^T v``, then
    ``o = q state``; no softmax and no 1/sqrt(D) scale. The same recurrence as
    ``lightning_attn2``: its final state continues here, and this state continues in it
    (``initial_state=state``). Not differentiable (inference).

    Args:
        q: (B, H, 1, D) the new token's query, float16, bfloat16 or float32, on CUDA (or the
            CPU under TRITON_INTERPRET=1). Any batch and head strides (a (B, 1, H, D) tensor
            seen through ``transpose(1, 2)`` is read in place; the strides are compile-time
            constants: a new set compiles once); the D elements contiguous, else it is copied
            first.
        k: (B, H, 1, D) its key, same dtype and device.
        v: (B, H, 1, E) its value, same dtype and device.
        state: (B, H, D, E) float32, contiguous: the state of the context (zeros for none);
            overwritten with the state after this token.
        decay: None (lambda = 1) or a floating tensor (H,) of rates s_h >= 0 on the same
            device, e.g. ``default_decay(H, device)``; the sign is checked for CPU tensors.

    Returns:
        o: (B, H, 1, E) in v's dtype (v's batch and head strides where v is dense).

    Limits: D and E in [16, 256], as ``lightning_attn2``. The state and the products are
    float32 (``lightning_attn2`` rounds the state to the input dtype for its tensor-core
    products; here there are none, so a step is at least as accurate).
    """
    # What validation and the launch depend on (every shape, dtype, device and stride): one
    # dictionary lookup when this call's were seen before.
    key = input_key(q, k, v, decay, state)
    if key is not None:
        key = (key, q.stride(), k.stride(), v.stride(), state.is_contiguous(),
               None if _config is None else tuple(sorted(_config.items())))
    launch = _CALLS.get(key) if key is not None else None
    if launch is None:
        _check(q, k, v, state, decay)
        launch = _plan(q, k, v, decay, _config)
        if key is not None:
            if len(_CALLS) > 4096:
                _CALLS.clear()
            _CALLS[key] = launch
    check_rates(decay)
    copy, grid, head, tail, num_warps = launch
    if copy:
        q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if decay is not None and (decay.dtype != torch.float32 or not decay.is_contiguous()):
        decay = decay.to(torch.float32).contiguous()
    o = torch.empty_like(v)  # v's strides where v is dense
    pointers = (q, k, v, o, state, q if decay is None else decay)
    strides = (o.stride(0), o.stride(1))
    _DECODE((head, strides, tail, q.dtype), grid, pointers + head + strides + tail, num_warps,
            1, q.device.index, aligned(pointers))
    return o


def _plan(q, k, v, decay, config):
    """A call's launch, all but its pointers and o's strides: (copy q, k or v first, grid,
    the constexprs before o's strides (H, D, E, q, k and v strides) and after them
    (BLOCK_D, BLOCK_E, NUM_E, HAS_DECAY), num_warps)."""
    b, h, _, d = q.shape
    e = v.shape[-1]
    copy = any(x.stride(-1) != 1 for x in (q, k, v))
    if copy:
        q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    cfg = _decode_config(b, h, d, e, sm_count(q.device), config)
    head = (h, d, e, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0),
            v.stride(1))
    tail = (cfg["BLOCK_D"], cfg["BLOCK_E"], cfg["NUM_E"], decay is not None)
    return copy, (b * h * cfg["NUM_E"], 1, 1), head, tail, cfg["num_warps"]


_CALLS: dict = {}  # a call's shapes, strides, dtypes, devices -> its launch (_plan)
_ON_CPU = interpreted(_lightning2_decode_kernel)
