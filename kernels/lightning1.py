"""Lightning Attention-1: IO-aware causal linear attention with decay, forward and backward.

"FlashAttention without softmax". Per head h with rate s_h >= 0 and lambda_h = exp(-s_h),
no softmax and no scale::

    o_t = q_t · sum_{j<=t} lambda_h^(t-j) k_j^T v_j,   i.e.   O = (Q K^T * M) V,
    M[i, j] = lambda^(i-j) for i >= j, else 0.

Each query block loops over every earlier key block, builds its tile of M on chip and
never writes an n x n matrix: O(n^2 d) work, O(n) memory. Tiles above the diagonal are
skipped. Off the diagonal the mask factorises, lambda^(i-j) = lambda^(i-i0) lambda^(i0-j)
with i0 the first row of the query block: both factors are <= 1 (no overflow at any
distance; an underflow to 0 only where the true weight is smaller still), the key factor
is one exp2 per key column and the query factor scales the accumulator once at the end.
The diagonal tile computes lambda^(i-j) directly.

Backward, FlashAttention-2 style without atomics (no fp32 gradient buffers):
dQ = (dO V^T * M) K is the forward itself with (q, k, v) -> (dO, V, K);
dK = (dO V^T * M)^T Q and dV = (Q K^T * M)^T dO loop, per key block, over query blocks i >= j.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LOG2E, MAX_GRID_Y, interpreted, validate


def _configs(pairs):
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in pairs
    ]


# Forward / dQ: BLOCK_M queries per program, BLOCK_N keys per step (BLOCK_M % BLOCK_N == 0).
# Measured on an H100 (bf16, D = E = 128, benchmarks/notes/lightning1.md): (128, 64, 8, 3) and
# (128, 64, 8, 4) are fastest at 4k and 32k alike; the others serve narrower or wider heads.
_FWD_CONFIGS = _configs(
    [(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 3)]
)
# dK/dV: BLOCK_N keys per program, BLOCK_M queries per step (BLOCK_N % BLOCK_M == 0). Two fp32
# accumulators [BLOCK_N, D] and [BLOCK_N, E] live in registers: at D = E = 128, BLOCK_N = 128
# needs 8 warps (4 warps spill heavily). (64, 128, 8, 3) was fastest on the H100 at 4k and 32k.
_BWD_CONFIGS = _configs(
    [(64, 128, 8, 3), (64, 128, 8, 2), (32, 128, 8, 3), (64, 64, 4, 2), (32, 64, 4, 2)]
)
# Used when no config above fits in shared memory, and for fp32: its exact ("ieee") products
# run on the CUDA cores, not the tensor cores, so fp32 is for checking, not for speed.
_FWD_FALLBACK = _configs([(64, 32, 4, 2)])
_BWD_FALLBACK = _configs([(32, 32, 4, 1)])
# Under the CPU interpreter every config would run in full while tuning, and small blocks
# make short test sequences cover several off-diagonal tiles: one small config there.
_CPU_FWD = _configs([(32, 16, 4, 1)])
_CPU_BWD = _configs([(16, 32, 4, 1)])
_SMEM_BUDGET = 200 * 1024  # of the H100's 227 KiB per block, with a margin for the estimate
# Where the config sweep measured the winner (Hopper, 16-bit, BLOCK_D = BLOCK_E = 128), it is
# the only config: tuning all five at the first call cost a fresh machine ~10 s of compiles,
# and the tuner, keyed without N, could pick at 1k a config 25% slower at 32k.
_MEASURED_BEST = {  # (compute capability major, BLOCK_D, BLOCK_E) -> (forward, dK/dV)
    (9, 128, 128): (_FWD_CONFIGS[0], _BWD_CONFIGS[0]),
}


def _measured_best(named_args, kwargs, which: int):
    q = named_args["q"]
    if q.element_size() != 2:
        return None
    major = torch.cuda.get_device_capability(q.device)[0]
    best = _MEASURED_BEST.get((major, kwargs["BLOCK_D"], kwargs["BLOCK_E"]))
    return None if best is None else [best[which]]


def _prune_fwd(configs, named_args, **kwargs):
    if named_args["q"].device.type == "cpu":
        return _CPU_FWD
    best = _measured_best(named_args, kwargs, 0)
    if best:
        return best
    # Resident q tile [BLOCK_M, BLOCK_D] plus num_stages k, v tiles
    # [BLOCK_N, BLOCK_D + BLOCK_E].
    elt, bd, be = named_args["q"].element_size(), kwargs["BLOCK_D"], kwargs["BLOCK_E"]
    fit = [] if elt == 4 else [c for c in _FWD_CONFIGS
           if elt * (c.kwargs["BLOCK_M"] * bd + c.num_stages * c.kwargs["BLOCK_N"] * (bd + be))
           <= _SMEM_BUDGET]
    return fit or _FWD_FALLBACK


def _prune_bwd(configs, named_args, **kwargs):
    if named_args["q"].device.type == "cpu":
        return _CPU_BWD
    best = _measured_best(named_args, kwargs, 1)
    if best:
        return best
    # Resident k, v tiles [BLOCK_N, BLOCK_D + BLOCK_E] plus num_stages q, do tiles
    # [BLOCK_M, BLOCK_D + BLOCK_E].
    elt, width = named_args["q"].element_size(), kwargs["BLOCK_D"] + kwargs["BLOCK_E"]
    fit = [] if elt == 4 else [c for c in _BWD_CONFIGS
           if elt * width * (c.kwargs["BLOCK_N"] + c.num_stages * c.kwargs["BLOCK_M"])
           <= _SMEM_BUDGET]
    return fit or _BWD_FALLBACK


@triton.autotune(
    configs=_FWD_CONFIGS + _FWD_FALLBACK + _CPU_FWD,
    key=["D", "E", "HAS_DECAY"],
    prune_configs_by={"early_config_prune": _prune_fwd},
)
@triton.jit(do_not_specialize=["N"])
def _lightning1_fwd_kernel(
    q, k, v, o, decay, N, H,
    D: tl.constexpr, E: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
    HAS_DECAY: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """o[i0:i0+BLOCK_M] of one (batch, head); q, k (N, D), v and o (N, E), row-major."""
    # Heaviest (last) query blocks first, and all blocks of one head side by side so that
    # they stream the same keys and values through L2.
    i_m = tl.num_programs(0) - 1 - tl.program_id(0)
    i_bh = tl.program_id(1)
    i_h = i_bh % H
    q += i_bh.to(tl.int64) * N * D
    k += i_bh.to(tl.int64) * N * D
    v += i_bh.to(tl.int64) * N * E
    o += i_bh.to(tl.int64) * N * E

    i0 = i_m * BLOCK_M
    o_i = i0 + tl.arange(0, BLOCK_M)
    o_j = tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    o_e = tl.arange(0, BLOCK_E)
    m_i = o_i < N
    m_d = o_d < D
    m_e = o_e < E

    b_q = tl.load(q + o_i[:, None] * D + o_d[None, :], mask=m_i[:, None] & m_d[None, :],
                  other=0.0)  # [BLOCK_M, BLOCK_D]
    b_o = tl.zeros([BLOCK_M, BLOCK_E], dtype=tl.float32)
    if HAS_DECAY:
        b_r = tl.load(decay + i_h).to(tl.float32) * LOG2E  # lambda^x = exp2(-b_r * x)

    # Off the diagonal every key j < i0 <= i: no causal and no length mask.
    for j0 in range(0, i0, BLOCK_N):
        p_k = k + (j0 + o_j)[:, None] * D + o_d[None, :]
        p_v = v + (j0 + o_j)[:, None] * E + o_e[None, :]
        b_k = tl.load(p_k, mask=m_d[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        b_v = tl.load(p_v, mask=m_e[None, :], other=0.0)  # [BLOCK_N, BLOCK_E]
        b_a = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)  # [BLOCK_M, BLOCK_N]
        if HAS_DECAY:
            # Key factor lambda^(i0 - j) <= 1.
            b_a *= tl.exp2(-b_r * (i0 - j0 - o_j).to(tl.float32))[None, :]
        b_o += tl.dot(b_a.to(b_v.dtype), b_v, input_precision=PRECISION)
    if HAS_DECAY:
        # Query factor lambda^(i - i0) <= 1, shared by every off-diagonal tile.
        b_o *= tl.exp2(-b_r * tl.arange(0, BLOCK_M).to(tl.float32))[:, None]

    # Diagonal tiles: causal mask, length mask, and lambda^(i-j) computed directly.
    for j0 in range(i0, tl.minimum(i0 + BLOCK_M, N), BLOCK_N):
        o_jj = j0 + o_j
        m_j = o_jj < N
        p_k = k + o_jj[:, None] * D + o_d[None, :]
        p_v = v + o_jj[:, None] * E + o_e[None, :]
        b_k = tl.load(p_k, mask=m_j[:, None] & m_d[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        b_v = tl.load(p_v, mask=m_j[:, None] & m_e[None, :], other=0.0)  # [BLOCK_N, BLOCK_E]
        b_a = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)  # [BLOCK_M, BLOCK_N]
        b_dist = o_i[:, None] - o_jj[None, :]  # i - j, [BLOCK_M, BLOCK_N]
        if HAS_DECAY:
            # Clamp first: exp2 of a positive exponent above the diagonal could overflow.
            b_m = tl.exp2(-b_r * tl.maximum(b_dist, 0).to(tl.float32))
            b_a = tl.where(b_dist >= 0, b_a * b_m, 0.0)
        else:
            b_a = tl.where(b_dist >= 0, b_a, 0.0)
        b_o += tl.dot(b_a.to(b_v.dtype), b_v, input_precision=PRECISION)

    tl.store(o + o_i[:, None] * E + o_e[None, :], b_o.to(o.dtype.element_ty),
             mask=m_i[:, None] & m_e[None, :])


@triton.autotune(
    configs=_BWD_CONFIGS + _BWD_FALLBACK + _CPU_BWD,
    key=["D", "E", "HAS_DECAY"],
    prune_configs_by={"early_config_prune": _prune_bwd},
)
@triton.jit(do_not_specialize=["N"])
def _lightning1_bwd_dkdv_kernel(
    q, k, v, do, dk, dv, decay, N, H,
    D: tl.constexpr, E: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
    HAS_DECAY: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dk, dv[j0:j0+BLOCK_N] of one (batch, head): a sum over query blocks i >= j."""
    i_n = tl.program_id(0)  # small j has the most query blocks: heaviest first
    i_bh = tl.program_id(1)
    i_h = i_bh % H
    q += i_bh.to(tl.int64) * N * D
    k += i_bh.to(tl.int64) * N * D
    dk += i_bh.to(tl.int64) * N * D
    v += i_bh.to(tl.int64) * N * E
    do += i_bh.to(tl.int64) * N * E
    dv += i_bh.to(tl.int64) * N * E

    j0 = i_n * BLOCK_N
    j_last = j0 + BLOCK_N - 1
    o_j = j0 + tl.arange(0, BLOCK_N)
    o_i = tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    o_e = tl.arange(0, BLOCK_E)
    m_j = o_j < N
    m_d = o_d < D
    m_e = o_e < E

    b_k = tl.load(k + o_j[:, None] * D + o_d[None, :], mask=m_j[:, None] & m_d[None, :],
                  other=0.0)  # [BLOCK_N, BLOCK_D]
    b_v = tl.load(v + o_j[:, None] * E + o_e[None, :], mask=m_j[:, None] & m_e[None, :],
                  other=0.0)  # [BLOCK_N, BLOCK_E]
    b_dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    b_dv = tl.zeros([BLOCK_N, BLOCK_E], dtype=tl.float32)
    if HAS_DECAY:
        b_r = tl.load(decay + i_h).to(tl.float32) * LOG2E  # lambda^x = exp2(-b_r * x)

    # Off the diagonal every query i > j_last >= j: only the length mask, on the last step.
    for i0 in range(j0 + BLOCK_N, N, BLOCK_M):
        o_ii = i0 + o_i
        m_i = o_ii < N
        p_q = q + o_ii[:, None] * D + o_d[None, :]
        p_do = do + o_ii[:, None] * E + o_e[None, :]
        b_q = tl.load(p_q, mask=m_i[:, None] & m_d[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
        b_do = tl.load(p_do, mask=m_i[:, None] & m_e[None, :], other=0.0)  # [BLOCK_M, BLOCK_E]
        if HAS_DECAY:
            # Query factor lambda^(i - j_last) <= 1 of
            # lambda^(i-j) = lambda^(i-j_last) lambda^(j_last-j).
            b_w = tl.exp2(-b_r * (o_ii - j_last).to(tl.float32))[None, :]
        # dV first, then dK: one [BLOCK_N, BLOCK_M] score tile live at a time (registers).
        b_s = tl.dot(b_k, tl.trans(b_q), input_precision=PRECISION)  # (Q K^T)^T [BLOCK_N, BLOCK_M]
        if HAS_DECAY:
            b_s *= b_w
        b_dv += tl.dot(b_s.to(b_do.dtype), b_do, input_precision=PRECISION)
        b_t = tl.dot(b_v, tl.trans(b_do), input_precision=PRECISION)  # (dO V^T)^T, same shape
        if HAS_DECAY:
            b_t *= b_w
        b_dk += tl.dot(b_t.to(b_q.dtype), b_q, input_precision=PRECISION)
    if HAS_DECAY:
        # Key factor lambda^(j_last - j) <= 1, shared by every off-diagonal tile.
        b_w = tl.exp2(-b_r * (j_last - o_j).to(tl.float32))[:, None]
        b_dk *= b_w
        b_dv *= b_w

    # Diagonal tiles: causal mask, length mask, and lambda^(i-j) computed directly.
    for i0 in range(j0, tl.minimum(j0 + BLOCK_N, N), BLOCK_M):
        o_ii = i0 + o_i
        m_i = o_ii < N
        p_q = q + o_ii[:, None] * D + o_d[None, :]
        p_do = do + o_ii[:, None] * E + o_e[None, :]
        b_q = tl.load(p_q, mask=m_i[:, None] & m_d[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
        b_do = tl.load(p_do, mask=m_i[:, None] & m_e[None, :], other=0.0)  # [BLOCK_M, BLOCK_E]
        b_s = tl.dot(b_k, tl.trans(b_q), input_precision=PRECISION)  # [BLOCK_N, BLOCK_M]
        b_t = tl.dot(b_v, tl.trans(b_do), input_precision=PRECISION)  # [BLOCK_N, BLOCK_M]
        b_dist = o_ii[None, :] - o_j[:, None]  # i - j, [BLOCK_N, BLOCK_M]
        if HAS_DECAY:
            b_m = tl.where(b_dist >= 0, tl.exp2(-b_r * tl.maximum(b_dist, 0).to(tl.float32)), 0.0)
        else:
            b_m = tl.where(b_dist >= 0, 1.0, 0.0)
        b_dv += tl.dot((b_s * b_m).to(b_do.dtype), b_do, input_precision=PRECISION)
        b_dk += tl.dot((b_t * b_m).to(b_q.dtype), b_q, input_precision=PRECISION)

    tl.store(dk + o_j[:, None] * D + o_d[None, :], b_dk.to(dk.dtype.element_ty),
             mask=m_j[:, None] & m_d[None, :])
    tl.store(dv + o_j[:, None] * E + o_e[None, :], b_dv.to(dv.dtype.element_ty),
             mask=m_j[:, None] & m_e[None, :])


def _meta(q, v, decay):
    """Kernel arguments shared by both launchers."""
    d, e = q.shape[-1], v.shape[-1]
    return dict(
        H=q.shape[1], D=d, E=e, BLOCK_D=triton.next_power_of_2(d),
        BLOCK_E=triton.next_power_of_2(e),
        HAS_DECAY=decay is not None,
        # fp32 inputs get true fp32 products, as torch's matmul does by default.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )


def _lightning1_fwd(q, k, v, decay):
    """o = (q k^T * M) v: q, k (B, H, N, D), v (B, H, N, E) contiguous -> o (B, H, N, E)."""
    b, h, n, _ = q.shape
    o = torch.empty_like(v)
    if o.numel() == 0:
        return o
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), b * h)
    _lightning1_fwd_kernel[grid](q, k, v, o, decay, n, **_meta(q, v, decay))
    return o


def _lightning1_bwd(q, k, v, do, decay):
    """dq, dk, dv for o = (q k^T * M) v, all contiguous."""
    b, h, n, _ = q.shape
    dq = _lightning1_fwd(do, v, k, decay)  # (dO V^T * M) K
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0 or v.numel() == 0:
        return dq, dk.zero_(), dv.zero_()
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), b * h)
    _lightning1_bwd_dkdv_kernel[grid](q, k, v, do, dk, dv, decay, n, **_meta(q, v, decay))
    return dq, dk, dv


class Lightning1Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, decay):
        o = _lightning1_fwd(q, k, v, decay)
        ctx.save_for_backward(q, k, v, decay)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, decay = ctx.saved_tensors
        dq, dk, dv = _lightning1_bwd(q, k, v, do.contiguous(), decay)
        return dq, dk, dv, None


def _interpreted() -> bool:
    """True when the kernels were built by Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return interpreted(_lightning1_fwd_kernel)


def lightning_attn1(q, k, v, decay=None):
    """Causal linear attention with per-head exponential decay, O(n^2 d) work, O(n) memory.

    o_t = q_t · sum_{j<=t} lambda_h^(t-j) k_j^T v_j with lambda_h = exp(-decay[h]); no softmax,
    no scale.

    Args:
        q: (B, H, N, D) queries, float16, bfloat16 or float32, on a CUDA device (or the CPU
            under TRITON_INTERPRET=1). 16 <= D <= 256; any N >= 0; B, H >= 1 with
            B * H <= 65535 (the grid axis that holds them); (N + 128) * max(D, E) < 2^31.
        k: (B, H, N, D) keys, same dtype and device as q.
        v: (B, H, N, E) values, same dtype and device; 16 <= E <= 256, E may differ from D.
        decay: None (lambda = 1, plain causal linear attention) or a floating tensor (H,) on
            the same device holding the rates s_h >= 0 (lambda_h = exp(-s_h)), e.g.
            ``default_decay(H, device)``. The sign is checked only for CPU tensors (a GPU
            check would synchronise the host); it gets no gradient.

    Returns:
        o: (B, H, N, E) in v's dtype. Accumulation is in float32; float32 inputs get full
        fp32 products (no TF32). Gradients flow to q, k and v. Non-contiguous inputs are
        copied to contiguous ones first.

    Raises:
        ValueError: on any input outside these limits (kernels/common.py: ``validate``).
    """
    # The grid's second axis holds B * H (and keeps a head's blocks side by side for L2).
    validate(q, k, v, decay, on_cpu=_interpreted(), grid_bh_limit=MAX_GRID_Y)
    if decay is not None:
        decay = decay.detach().to(torch.float32).contiguous()  # [H]
    return Lightning1Function.apply(q.contiguous(), k.contiguous(), v.contiguous(), decay)
