"""Lightning Attention-2 (arXiv 2401.04658) forward and backward in Triton, with states.

Per head h with decay rate s_h >= 0 and lambda_h = exp(-s_h) (no softmax, no scale), and an
optional initial state S0 (D, E)::

    o_t = q_t · (lambda^(t+1) S0 + sum_{j<=t} lambda^(t-j) k_j^T v_j)
    S_N = lambda^N S0 + sum_j lambda^(N-1-j) k_j^T v_j            (the final state)

The paper's tiling: blocks of BLOCK_N tokens; inside a block the masked product
(Q K^T * M) V with the decay mask M built on chip; between blocks a running state in fp32
registers. Nothing of size N x D x E ever reaches HBM. Derivations and measurements:
benchmarks/notes/lightning2.md.

Kernels:
* ``_lightning2_scan_kernel``: one decayed scan o = q · (state of k^T v), causal or
  anti-causal (REVERSE), the state split over BLOCK_E columns per program, over a whole
  sequence or one segment of it. It is the forward, dq (the causal scan of (do, v, k)), dk
  (the anti-causal scan of (v, do, q)) and dv (the anti-causal scan of (k, q, do)): the
  backward is three scans (the default). STATE_ONLY: a segment's own state, no output.
* ``_lightning2_combine_kernel``: the decayed prefix of segment states, the state each
  segment starts from (causal or reverse): the sequence split where B x H does not fill
  the GPU, and ``lightning2-sp``'s combine across GPUs (``prefix_states``).
* ``_lightning2_bwd_dkdv_kernel``: dk and dv in one anti-causal scan per head that holds
  the whole gradient state dS (D, E) on chip and shares it between them (head dims <= 128).
  Opt-in (``_config={"fused": True}``): fewer FLOPs and bytes, but slower on the H100
  (one serial chain per SM; notes, round two).

Host side: a call's validation and launch settings are cached by its shapes, strides,
dtypes and devices, and after the first call the compiled kernels are launched directly
(``common.Launcher``), so issuing a call costs little more than its allocations.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .common import (
    LOG2E,
    MAX_OFFSET,
    Launcher,
    aligned,
    check_inputs,
    check_rates,
    default_decay,
    input_key,
    interpreted,
    pow2,
)

__all__ = ["lightning_attn2", "prefix_states", "default_decay"]


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------


@triton.jit
def _block_decays(b_s, base, N, o_n, BLOCK_N: tl.constexpr, REVERSE: tl.constexpr):
    """Key factors and the block factor that age one block into the state.

    Causal: the state is anchored one row before the block; after it, at the block's last
    valid row. Anti-causal (blocks aligned to end at N): anchored at the block's last row;
    after it, one row before its first valid row. Exponents are clamped at 0 on masked rows.
    """
    if REVERSE:
        shift = tl.minimum(base, 0)  # < 0 only for the partial block at the sequence start
        b_kf = tl.exp2(-b_s * tl.maximum(o_n + 1 + shift, 0).to(tl.float32))
        b_bf = tl.exp2(-b_s * (BLOCK_N + shift).to(tl.float32))
    else:
        last = tl.minimum(base + BLOCK_N, N) - 1
        b_kf = tl.exp2(-b_s * tl.maximum(last - base - o_n, 0).to(tl.float32))
        b_bf = tl.exp2(-b_s * (last - base + 1).to(tl.float32))
    return b_kf, b_bf


@triton.jit
def _at_token(x, i_bh, N, start, H: tl.constexpr, X: tl.constexpr, XN: tl.constexpr):
    """x moved to token ``start`` of head ``i_bh`` of a (B, H, N, X) tensor whose rows lie
    X apart (XN == X: (B, H, N, X) memory) or H·X apart (XN == H·X: (B, N, H, X) memory,
    the layout a model's projections write)."""
    if XN == X:
        return x + (i_bh.to(tl.int64) * N + start) * X
    return x + ((i_bh // H).to(tl.int64) * N + start) * XN + (i_bh % H) * X


@triton.jit(do_not_specialize=["N", "SEG", "NUM_SEG"])
def _lightning2_scan_kernel(
    q,  # (B, H, N, D), rows QN apart (unused with STATE_ONLY)
    k,  # (B, H, N, D), rows KN apart
    v,  # (B, H, N, E), rows VN apart
    o,  # (B, H, N, E), rows ON apart, written in o's dtype (unused with STATE_ONLY)
    decay,  # [H] float32 decay rates (unused without HAS_DECAY)
    h0,  # [B*H, NUM_SEG, D, E] initial state of each segment, read with strides (SD, SE)
    ht,  # [B*H, NUM_SEG, D, E] float32 state after each segment, written (STORE_HT)
    N,
    SEG,  # tokens per segment (the last one may be shorter); N when the sequence is whole
    NUM_SEG,  # segments per sequence, cdiv(N, SEG) (1 when whole)
    H: tl.constexpr,
    D: tl.constexpr,
    E: tl.constexpr,
    QN: tl.constexpr,  # elements between tokens of q: D, or H*D ((B, N, H, D) memory)
    KN: tl.constexpr,  # of k: D or H*D
    VN: tl.constexpr,  # of v: E or H*E
    ON: tl.constexpr,  # of o: E or H*E
    SD: tl.constexpr,
    SE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_E: tl.constexpr,
    NUM_E: tl.constexpr,
    HAS_DECAY: tl.constexpr,
    HAS_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
    REVERSE: tl.constexpr,
    STATE_ONLY: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """o_t = q_t · (state of k_j^T v_j over j <= t, aged lambda^(t-j)) (REVERSE: j >= t),
    over one segment of one head from that segment's initial state. STATE_ONLY: no output,
    only the segment's state (from h0, or from zero), for the combine of segments."""
    # One grid axis (< 2^31 programs: no 65535 limit), ordered (head, segment, E-slice): the
    # E-slices of a segment are neighbours and share their q and k reads through L2.
    i_e, i_seg = tl.program_id(0) % NUM_E, tl.program_id(0) // NUM_E
    i_bh, i_s = i_seg // NUM_SEG, i_seg % NUM_SEG
    i_h = i_bh % H
    start = i_s * SEG
    n = tl.minimum(SEG, N - start)  # this segment's length; everything below is relative
    q = _at_token(q, i_bh, N, start, H, D, QN)
    k = _at_token(k, i_bh, N, start, H, D, KN)
    v = _at_token(v, i_bh, N, start, H, E, VN)
    o = _at_token(o, i_bh, N, start, H, E, ON)

    o_n = tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    o_e = i_e * BLOCK_E + tl.arange(0, BLOCK_E)
    m_d = o_d < D
    m_e = o_e < E
    # Row i takes column j of its own block where j <= i (causal) or j >= i (REVERSE).
    if REVERSE:
        b_dist = o_n[None, :] - o_n[:, None]
        b_age = BLOCK_N - 1 - o_n  # rows from the state's anchor, the block's last row
    else:
        b_dist = o_n[:, None] - o_n[None, :]
        b_age = o_n + 1  # rows from the anchor, one row before the block
    m_in = b_dist >= 0
    b_s = 0.0
    if HAS_DECAY:
        b_s = tl.load(decay + i_h).to(tl.float32) * LOG2E  # lambda^x = exp2(-b_s * x)
        # where() after exp2: the masked (negative) distances may give inf, never used.
        b_m = tl.where(m_in, tl.exp2(-b_s * b_dist.to(tl.float32)), 0.0)  # [BLOCK_N, BLOCK_N]
        b_rf = tl.exp2(-b_s * b_age.to(tl.float32))  # [BLOCK_N]

    p_h = i_seg.to(tl.int64) * D * E + o_d[:, None] * SD + o_e[None, :] * SE
    m_h = m_d[:, None] & m_e[None, :]
    if HAS_H0:
        b_h = tl.load(h0 + p_h, mask=m_h, other=0.0).to(tl.float32)  # [BLOCK_D, BLOCK_E]
    else:
        b_h = tl.zeros([BLOCK_D, BLOCK_E], dtype=tl.float32)
    NT = tl.cdiv(n, BLOCK_N)
    for i in range(0, NT):
        if REVERSE:
            base = n - (i + 1) * BLOCK_N  # blocks end at n; the partial one is at the start
        else:
            base = i * BLOCK_N
        o_t = base + o_n
        m_t = (o_t >= 0) & (o_t < n)
        # Masked loads fill zeros outside [0, n) and past D, E: partial blocks are exact.
        b_k = tl.load(k + o_t[:, None] * KN + o_d[None, :],
                      mask=m_t[:, None] & m_d[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        b_v = tl.load(v + o_t[:, None] * VN + o_e[None, :],
                      mask=m_t[:, None] & m_e[None, :], other=0.0)  # [BLOCK_N, BLOCK_E]
        if not STATE_ONLY:
            b_q = tl.load(q + o_t[:, None] * QN + o_d[None, :],
                          mask=m_t[:, None] & m_d[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
            b_a = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)  # [BLOCK_N, BLOCK_N]
            if HAS_DECAY:
                b_a = b_a * b_m
            else:
                b_a = tl.where(m_in, b_a, 0.0)
            b_o = tl.dot(b_a.to(b_v.dtype), b_v, input_precision=PRECISION)  # [BLOCK_N, BLOCK_E]
            b_inter = tl.dot(b_q, b_h.to(b_q.dtype), input_precision=PRECISION)
            if HAS_DECAY:
                b_o += b_inter * b_rf[:, None]
            else:
                b_o += b_inter
            tl.store(o + o_t[:, None] * ON + o_e[None, :], b_o.to(o.dtype.element_ty),
                     mask=m_t[:, None] & m_e[None, :])
        if HAS_DECAY:
            b_kf, b_bf = _block_decays(b_s, base, n, o_n, BLOCK_N, REVERSE)
            b_vw = (b_v * b_kf[:, None]).to(b_v.dtype)
            b_h = b_h * b_bf + tl.dot(tl.trans(b_k), b_vw, input_precision=PRECISION)
        else:
            b_h += tl.dot(tl.trans(b_k), b_v, input_precision=PRECISION)
    if STORE_HT:
        tl.store(ht + p_h, b_h, mask=m_h)


@triton.jit(do_not_specialize=["SEG", "LAST", "NUM_SEG"])
def _lightning2_combine_kernel(
    states,  # [B*H, NUM_SEG, D*E] float32: each segment's own state (from a zero start)
    starts,  # [B*H, NUM_SEG, D*E] the state each segment starts from, written (may be states)
    decay,  # [H] float32 decay rates (HAS_DECAY)
    h0,  # [B*H, D*E] float32 state before the first segment (HAS_H0)
    ht,  # [B*H, D*E] float32 state after the last segment, written (STORE_HT)
    SEG,  # tokens of every segment but the last
    LAST,  # tokens of the last segment
    NUM_SEG,
    H: tl.constexpr,
    DE: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_DECAY: tl.constexpr,
    HAS_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
    REVERSE: tl.constexpr,
):
    """The decayed prefix of segment states: starts_r = lambda^(L_(r-1)) starts_(r-1) +
    states_(r-1), starts_0 = h0 (REVERSE: the mirror, from the last segment down)."""
    i_bh, i_c = tl.program_id(0), tl.program_id(1)
    o_c = i_c * BLOCK + tl.arange(0, BLOCK)
    m_c = o_c < DE
    if HAS_H0:
        b_a = tl.load(h0 + i_bh.to(tl.int64) * DE + o_c, mask=m_c, other=0.0).to(tl.float32)
    else:
        b_a = tl.zeros([BLOCK], dtype=tl.float32)
    f_seg = 1.0
    f_last = 1.0
    if HAS_DECAY:
        b_s = tl.load(decay + i_bh % H).to(tl.float32) * LOG2E
        f_seg = tl.exp2(-b_s * SEG.to(tl.float32))
        f_last = tl.exp2(-b_s * LAST.to(tl.float32))
    base = i_bh.to(tl.int64) * NUM_SEG * DE
    for r in range(0, NUM_SEG):
        if REVERSE:
            i_s = NUM_SEG - 1 - r
        else:
            i_s = r
        p = base + i_s * DE + o_c
        b_l = tl.load(states + p, mask=m_c, other=0.0)  # [BLOCK] read before starts overwrites
        tl.store(starts + p, b_a.to(starts.dtype.element_ty), mask=m_c)
        if HAS_DECAY:
            b_a = b_a * tl.where(i_s == NUM_SEG - 1, f_last, f_seg) + b_l
        else:
            b_a += b_l
    if STORE_HT:
        tl.store(ht + i_bh.to(tl.int64) * DE + o_c, b_a, mask=m_c)


@triton.jit(do_not_specialize=["N"])
def _lightning2_bwd_dkdv_kernel(
    q,  # [B*H, N, D]
    k,  # [B*H, N, D]
    v,  # [B*H, N, E]
    do,  # [B*H, N, E]
    dk,  # [B*H, N, D]
    dv,  # [B*H, N, E]
    decay,  # [H] float32 decay rates (HAS_DECAY)
    dht,  # [B*H, D, E] float32 gradient of the final state (HAS_DHT)
    dh0,  # [B*H, D, E] float32 gradient of the initial state, written (STORE_DH0)
    N,
    H: tl.constexpr,
    D: tl.constexpr,
    E: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_E: tl.constexpr,
    HAS_DECAY: tl.constexpr,
    HAS_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dk and dv of one head in one anti-causal scan sharing the gradient state dS.

    With dS_j = sum_{t>=j} lambda^(t-j) q_t^T do_t + lambda^(N-1-j) dS_N  (D, E):
        dv_j = k_j dS_j,   dk_j = v_j dS_j^T,   dS0 = lambda dS_0.
    Inside a block the t >= j terms are the masked products (K Q^T * M^T) dO and
    (V dO^T * M^T) Q; the state carries the later blocks, anchored at the block's last row.
    """
    i_bh = tl.program_id(0)
    i_h = i_bh % H
    q += i_bh.to(tl.int64) * N * D
    k += i_bh.to(tl.int64) * N * D
    dk += i_bh.to(tl.int64) * N * D
    v += i_bh.to(tl.int64) * N * E
    do += i_bh.to(tl.int64) * N * E
    dv += i_bh.to(tl.int64) * N * E

    o_n = tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    o_e = tl.arange(0, BLOCK_E)
    m_d = o_d < D
    m_e = o_e < E
    b_dist = o_n[None, :] - o_n[:, None]  # t - j for row j, column t
    m_in = b_dist >= 0
    b_s = 0.0
    if HAS_DECAY:
        b_s = tl.load(decay + i_h).to(tl.float32) * LOG2E
        b_m = tl.where(m_in, tl.exp2(-b_s * b_dist.to(tl.float32)), 0.0)  # [BLOCK_N, BLOCK_N]
        b_rf = tl.exp2(-b_s * (BLOCK_N - 1 - o_n).to(tl.float32))  # row j from the anchor

    p_h = i_bh.to(tl.int64) * D * E + o_d[:, None] * E + o_e[None, :]
    m_h = m_d[:, None] & m_e[None, :]
    if HAS_DHT:
        b_ds = tl.load(dht + p_h, mask=m_h, other=0.0)  # [BLOCK_D, BLOCK_E] fp32
    else:
        b_ds = tl.zeros([BLOCK_D, BLOCK_E], dtype=tl.float32)
    NT = tl.cdiv(N, BLOCK_N)
    for i in range(0, NT):
        base = N - (i + 1) * BLOCK_N
        o_t = base + o_n
        m_t = o_t >= 0
        m_td = m_t[:, None] & m_d[None, :]
        m_te = m_t[:, None] & m_e[None, :]
        p_d = o_t[:, None] * D + o_d[None, :]
        p_e = o_t[:, None] * E + o_e[None, :]
        b_q = tl.load(q + p_d, mask=m_td, other=0.0)  # [BLOCK_N, BLOCK_D]
        b_k = tl.load(k + p_d, mask=m_td, other=0.0)  # [BLOCK_N, BLOCK_D]
        b_v = tl.load(v + p_e, mask=m_te, other=0.0)  # [BLOCK_N, BLOCK_E]
        b_do = tl.load(do + p_e, mask=m_te, other=0.0)  # [BLOCK_N, BLOCK_E]
        b_dsc = b_ds.to(b_q.dtype)  # [BLOCK_D, BLOCK_E]

        # dv: (k Q^T * M^T) dO + k dS.
        b_p = tl.dot(b_k, tl.trans(b_q), input_precision=PRECISION)  # [BLOCK_N, BLOCK_N] k_j·q_t
        if HAS_DECAY:
            b_p = b_p * b_m
        else:
            b_p = tl.where(m_in, b_p, 0.0)
        b_dv = tl.dot(b_p.to(b_do.dtype), b_do, input_precision=PRECISION)  # [BLOCK_N, BLOCK_E]
        b_dvi = tl.dot(b_k, b_dsc, input_precision=PRECISION)
        if HAS_DECAY:
            b_dv += b_dvi * b_rf[:, None]
        else:
            b_dv += b_dvi
        tl.store(dv + p_e, b_dv.to(dv.dtype.element_ty), mask=m_te)

        # dk: (v dO^T * M^T) q + v dS^T.
        b_p = tl.dot(b_v, tl.trans(b_do), input_precision=PRECISION)  # [BLOCK_N, BLOCK_N] v_j·do_t
        if HAS_DECAY:
            b_p = b_p * b_m
        else:
            b_p = tl.where(m_in, b_p, 0.0)
        b_dk = tl.dot(b_p.to(b_q.dtype), b_q, input_precision=PRECISION)  # [BLOCK_N, BLOCK_D]
        b_dki = tl.dot(b_v, tl.trans(b_dsc), input_precision=PRECISION)
        if HAS_DECAY:
            b_dk += b_dki * b_rf[:, None]
        else:
            b_dk += b_dki
        tl.store(dk + p_d, b_dk.to(dk.dtype.element_ty), mask=m_td)

        # dS <- lambda^L dS + sum_t lambda^(t - anchor') q_t^T do_t.
        if HAS_DECAY:
            b_kf, b_bf = _block_decays(b_s, base, N, o_n, BLOCK_N, True)
            b_qw = (b_q * b_kf[:, None]).to(b_q.dtype)
            b_ds = b_ds * b_bf + tl.dot(tl.trans(b_qw), b_do, input_precision=PRECISION)
        else:
            b_ds += tl.dot(tl.trans(b_q), b_do, input_precision=PRECISION)
    if STORE_DH0:
        tl.store(dh0 + p_h, b_ds, mask=m_h)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------

_SCAN = Launcher(_lightning2_scan_kernel)
_COMBINE = Launcher(_lightning2_combine_kernel)
_DKDV = Launcher(_lightning2_bwd_dkdv_kernel)

# The per-segment states a split forward keeps for the backward stay under this share of
# the bytes of q, k and v (issue: "a state buffer ... at most 5% of the inputs").
STATE_SHARE = 0.05
# Programs per SM a split aims at: one. The scans hold one program per SM (4 stages of
# q, k, v tiles in shared memory), so one wave of equal segments; two waves of segments
# half as long measured 3-10% slower at batch 1 / heads 8 on the H100 (notes, round three).
PROGRAMS_PER_SM = 1
NOMINAL_SMS = 132  # an H100's; the interpreter (CPU) plans as if on one


def _scan_config(d: int, e: int, dtype: torch.dtype, tf32: bool) -> dict:
    """Tiles of a scan with (D, E) = (d, e), by dtype (H100: benchmarks/notes/lightning2.md)."""
    block_e = min(64, pow2(e))
    if dtype == torch.float32 and not tf32:
        # IEEE fp32 dots run on CUDA cores: small tiles keep compile time sane.
        cfg = dict(BLOCK_N=32, BLOCK_E=min(32, block_e), num_warps=4, num_stages=1)
    elif dtype == torch.float32:
        cfg = dict(BLOCK_N=64, BLOCK_E=block_e, num_warps=4, num_stages=2)
    elif pow2(d) <= 128:
        cfg = dict(BLOCK_N=64, BLOCK_E=block_e, num_warps=4, num_stages=4)
    else:
        cfg = dict(BLOCK_N=32, BLOCK_E=block_e, num_warps=8, num_stages=3)
    return cfg


def _dkdv_config(d: int, e: int, dtype: torch.dtype, tf32: bool) -> dict | None:
    """The fused dk/dv scan holds dS (D, E) whole: up to 128 x 128, 16-bit or TF32 inputs.

    Opt-in (``_config={"fused": True}``): on the H100 it lost to the three scans (20-23
    against 27.7 M tokens/s at the paper shape; notes, round two)."""
    bd, be = pow2(d), pow2(e)
    if max(bd, be) > 128 or (dtype == torch.float32 and not tf32):
        return None
    if dtype == torch.float32:
        return dict(BLOCK_N=32 if bd * be > 64 * 64 else 64, num_warps=8, num_stages=1)
    return dict(BLOCK_N=64, num_warps=4, num_stages=2)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the per-segment states a split call keeps: bfloat16 for bfloat16 inputs
    (the scans cast the state to bfloat16 for their products anyway), float32 otherwise
    (bfloat16 starts would cost fp16 inputs 10x their error; fp16 ones could overflow)."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def segment_length(b: int, h: int, n: int, d: int, e: int, dtype: torch.dtype,
                   sms: int = NOMINAL_SMS) -> int:
    """Tokens per segment of the sequence-split scan; ``n`` means no split.

    No split where the B*H*(E / BLOCK_E) programs of the whole-sequence scan already fill
    ``sms`` SMs. Else as many segments as give at most ``PROGRAMS_PER_SM`` programs per SM
    (one wave: equal segments finish together), each long enough that the states kept for
    the backward (one (D, E) per segment) stay under ``STATE_SHARE`` of the bytes of q, k,
    v; lengths a multiple of BLOCK_N. ``_config={"segment": L}`` of ``lightning_attn2``
    overrides it (tests, tuning; any L >= 1, L >= N for the whole sequence).
    """
    cfg = _scan_config(d, e, dtype, False)
    programs = b * h * -(-e // cfg["BLOCK_E"])
    if n == 0 or programs >= sms:
        return n
    wanted = PROGRAMS_PER_SM * sms // programs  # at most the programs that run at once
    element = torch.finfo(dtype).bits // 8
    state = d * e * torch.finfo(state_dtype(dtype)).bits // 8
    shortest = state / (STATE_SHARE * (2 * d + e) * element)
    count = min(wanted, int(n // shortest))
    if count <= 1:
        return n
    per, block = -(-n // count), cfg["BLOCK_N"]
    return -(-per // block) * block


def _plan(d, e, dtype, tf32, config):
    """Launch settings of one call shape: (forward scan, dq scan, fused dk/dv or None,
    state-only scan, precision). ``config`` overrides tiles for benchmarks: BLOCK_N,
    BLOCK_E, num_warps, num_stages of the scans; the same keys prefixed ``state_`` for the
    state-only scans of a split call alone; dkdv_BLOCK_N, dkdv_num_warps, dkdv_num_stages
    of the fused scan; fused=True for the two-scan backward (dq, then dk and dv sharing dS)."""
    over = {kk: vv for kk, vv in (config or {}).items()
            if kk in ("BLOCK_N", "BLOCK_E", "num_warps", "num_stages")}
    fwd = {**_scan_config(d, e, dtype, tf32), **over}
    dq = {**_scan_config(e, d, dtype, tf32), **over}  # the dq scan's (D, E) are (E, D)
    state = {**fwd, **{kk[6:]: vv for kk, vv in (config or {}).items()
                       if kk.startswith("state_")}}
    # Integers the launches need, computed once here (triton.cdiv and next_power_of_2 are
    # @jit helpers costing ~10 us each when called from Python).
    fwd.update(BLOCK_D=pow2(d), NUM_E=-(-e // fwd["BLOCK_E"]))
    dq.update(BLOCK_D=pow2(e), NUM_E=-(-d // dq["BLOCK_E"]))
    state.update(BLOCK_D=pow2(d), NUM_E=-(-e // state["BLOCK_E"]))
    dkdv = None
    if config and config.get("fused"):
        dkdv = _dkdv_config(d, e, dtype, tf32)
        if dkdv is not None:
            dkdv.update({kk[5:]: vv for kk, vv in config.items() if kk.startswith("dkdv_")})
            dkdv.update(BLOCK_D=pow2(d), BLOCK_E=pow2(e))
    precision = ("tf32" if tf32 else "ieee") if dtype == torch.float32 else "tf32"
    return fwd, dq, dkdv, state, precision


def _scan_launch(cfg, shape, dtype, precision, tokens, *, has_decay, segments=None,
                 has_h0=False, store_ht=False, reverse=False, transpose=False,
                 state_only=False, h0_dtype=torch.float32):
    """A scan launch of ``shape`` = (B, H, N, D, E) of the scan, all but its 7 pointers:
    (launcher, key, grid, the arguments after the pointers, num_warps, num_stages).
    ``tokens``: the elements between tokens of its q, k, v, o (``_token_stride``).
    ``segments`` = (tokens per segment, count), None for the whole sequence. States
    (B, H, [S,] D', E') are read and written transposed when ``transpose`` (the scan's
    (D, E) are then (E', D')); ``h0_dtype`` is the dtype of the states read."""
    b, h, n, d, e = shape
    seg, count = segments or (n, 1)
    sd, se = (1, d) if transpose else (e, 1)
    tail = (h, d, e, *tokens, sd, se, cfg["BLOCK_N"], cfg["BLOCK_D"], cfg["BLOCK_E"],
            cfg["NUM_E"], has_decay, has_h0, store_ht, reverse, state_only, precision)
    nw, ns = cfg["num_warps"], cfg["num_stages"]
    return (_SCAN, (tail, dtype, h0_dtype, nw, ns), (b * h * count * cfg["NUM_E"], 1, 1),
            (n, seg, count, *tail), nw, ns)


def _combine_launch(shape, segments, *, has_decay, has_h0, store_ht, reverse, dtype):
    """The combine of ``segments`` = (tokens per segment, count, tokens of the last one) of
    states (B, H, D, E), all but its 5 pointers; ``dtype``: of the starts written."""
    b, h, d, e = shape
    seg, count, last = segments
    block = min(1024, pow2(d * e))
    tail = (h, d * e, block, has_decay, has_h0, store_ht, reverse)
    return (_COMBINE, (tail, dtype), (b * h, -(-d * e // block), 1), (seg, last, count, *tail),
            4, 1)


def _dkdv_launch(cfg, shape, dtype, has_decay, has_dht, store_dh0, precision):
    """The fused dk/dv launch, all but its 9 pointers (as ``_scan_launch``)."""
    b, h, n, d, e = shape
    tail = (h, d, e, cfg["BLOCK_N"], cfg["BLOCK_D"], cfg["BLOCK_E"], has_decay, has_dht,
            store_dh0, precision)
    nw, ns = cfg["num_warps"], cfg["num_stages"]
    return _DKDV, (tail, dtype, nw, ns), (b * h, 1, 1), (n, *tail), nw, ns


def _launch(spec, pointers, device_index):
    launcher, key, grid, rest, nw, ns = spec
    launcher(key, grid, pointers + rest, nw, ns, device_index, aligned(pointers))


class _Launches:
    """Every launch of one call shape, built once (the per-call work is then the pointers).

    Whole sequence (``segments`` None): the forward scan; backward the dq scan and the
    dk, dv scans (or the fused dk/dv scan). Split into segments: forward the segments' own
    states (a state-only scan), their combine (the starts, kept for the backward, and the
    final state), the scan of every segment from its start; backward the dq scan from the
    kept starts, the gradient states of the segments (a reverse state-only scan of q, do),
    their reverse combine (the starts of dS, and dS0), the dk and dv scans from them.
    ``tokens``: the token strides of q, k, v (o is made in v's layout); ``copy``: which of
    them a call copies first (a layout the scans do not read in place).
    """

    def __init__(self, plan, shape, dtype, has_decay, has_h0, output_final_state, seg,
                 tokens, copy):
        self.plan, self.shape, self.dtype = plan, shape, dtype
        self.has_decay, self.has_h0 = has_decay, has_h0
        self.tokens, self.copy = tokens, copy
        qn, kn, vn = tokens
        fwd_cfg, _, _, state_cfg, precision = plan
        b, h, n, d, e = shape
        self.segments = None
        self.state_dtype = state_dtype(dtype)
        if seg < n:
            count = -(-n // seg)
            self.segments = (seg, count)
            self.combine_segments = (seg, count, n - (count - 1) * seg)
        common = dict(has_decay=has_decay, segments=self.segments)
        # pointer roles (q, k, v, o) of each scan, as in _lightning2_fwd
        out = (qn, kn, vn, vn)
        if self.segments is None:
            self.fwd = (_scan_launch(fwd_cfg, shape, dtype, precision, out, has_h0=has_h0,
                                     store_ht=output_final_state, **common),)
        else:
            self.fwd = (
                _scan_launch(state_cfg, shape, dtype, precision, (kn, kn, vn, kn),
                             store_ht=True, state_only=True, **common),
                _combine_launch((b, h, d, e), self.combine_segments, has_decay=has_decay,
                                has_h0=has_h0, store_ht=output_final_state, reverse=False,
                                dtype=self.state_dtype),
                _scan_launch(fwd_cfg, shape, dtype, precision, out, has_h0=True,
                             h0_dtype=self.state_dtype, **common),
            )
        self._bwd: dict = {}

    def bwd(self, has_dht, need_dh0, don):
        """The backward's launches; ``don``: the token stride of do."""
        spec = self._bwd.get((has_dht, need_dh0, don))
        if spec is not None:
            return spec
        fwd_cfg, dq_cfg, dkdv, state_cfg, precision = self.plan
        b, h, n, d, e = self.shape
        qn, kn, vn = self.tokens
        flip = (b, h, n, e, d)  # the dq and dk scans' (D, E) are (E, D)
        common = dict(has_decay=self.has_decay, segments=self.segments)
        # pointer roles (q, k, v, o) of each scan, as in _lightning2_bwd
        dq_roles, dk_roles, dv_roles = (don, vn, kn, qn), (vn, don, qn, kn), (kn, qn, don, vn)
        if self.segments is None:
            dq = _scan_launch(dq_cfg, flip, self.dtype, precision, dq_roles,
                              has_h0=self.has_h0, transpose=True, **common)
            if dkdv is not None:
                rest = (_dkdv_launch(dkdv, self.shape, self.dtype, self.has_decay, has_dht,
                                     need_dh0, precision),)
            else:
                rest = (_scan_launch(dq_cfg, flip, self.dtype, precision, dk_roles,
                                     has_h0=has_dht, reverse=True, transpose=True, **common),
                        _scan_launch(fwd_cfg, self.shape, self.dtype, precision, dv_roles,
                                     has_h0=has_dht, store_ht=need_dh0, reverse=True,
                                     **common))
        else:
            starts = dict(has_h0=True, h0_dtype=self.state_dtype)
            dq = _scan_launch(dq_cfg, flip, self.dtype, precision, dq_roles, transpose=True,
                              **starts, **common)
            rest = (
                _scan_launch(state_cfg, self.shape, self.dtype, precision, (qn, qn, don, qn),
                             store_ht=True, reverse=True, state_only=True, **common),
                _combine_launch((b, h, d, e), self.combine_segments, has_decay=self.has_decay,
                                has_h0=has_dht, store_ht=need_dh0, reverse=True,
                                dtype=self.state_dtype),
                _scan_launch(dq_cfg, flip, self.dtype, precision, dk_roles, reverse=True,
                             transpose=True, **starts, **common),
                _scan_launch(fwd_cfg, self.shape, self.dtype, precision, dv_roles,
                             reverse=True, **starts, **common),
            )
        spec = self._bwd[(has_dht, need_dh0, don)] = (dq, *rest)
        return spec


def _token_stride(t: torch.Tensor, contiguous_only: bool = False) -> int | None:
    """Elements between consecutive tokens of a (B, H, N, X) tensor that the scans read and
    write in place: X (contiguous), or H*X (a (B, N, H, X) tensor seen through
    ``transpose(1, 2)``, what a model's projections give) while in-head offsets fit int32;
    None: the call copies it (any other layout; ``contiguous_only`` for the fused scan)."""
    _, h, n, x = t.shape
    if t.is_contiguous():
        return x
    if (not contiguous_only and t.transpose(1, 2).is_contiguous()
            and (n + 128) * h * x < MAX_OFFSET):
        return h * x
    return None


def _states(q, count, e, dtype):
    """(B, H, count, D, E) states in ``dtype``, uninitialised."""
    b, h, _, d = q.shape
    return q.new_empty(b, h, count, d, e, dtype=dtype)


def _lightning2_fwd(q, k, v, decay, h0, output_final_state, launches):
    """o (B, H, N, E) in v's dtype, the final state (B, H, D, E) fp32 if asked, and the
    segments' starts (B, H, S, D, E) the backward reads (None for a whole-sequence scan)."""
    o = torch.empty_like(v)
    b, h, _, d = q.shape
    e = v.shape[-1]
    ht = q.new_empty(b, h, d, e, dtype=torch.float32) if output_final_state else None
    # Unused pointer arguments (no decay, no states) get q: any tensor will do.
    dec, dev = (q if decay is None else decay), q.device.index
    h0_, ht_ = (q if h0 is None else h0), (q if ht is None else ht)
    if launches.segments is None:
        _launch(launches.fwd[0], (q, k, v, o, dec, h0_, ht_), dev)
        return o, ht, None
    local_, combine, scan = launches.fwd
    own = _states(q, launches.segments[1], e, torch.float32)
    _launch(local_, (k, k, v, k, dec, k, own), dev)
    starts = own if launches.state_dtype == torch.float32 else torch.empty_like(
        own, dtype=launches.state_dtype)
    _launch(combine, (own, starts, dec, h0_, ht_), dev)
    del own  # 16-bit inputs: the fp32 states go once combined into (16-bit) starts
    _launch(scan, (q, k, v, o, dec, starts, q), dev)
    return o, ht, starts


def _lightning2_bwd(q, k, v, do, decay, h0, starts, dht, need_dh0, launches):
    """dq, dk, dv (input dtype) and dh0 (fp32, if ``need_dh0``), derivation in the notes.

    dq_i = do_i · (lambda^(i+1) S0 + sum_{j<=i} lambda^(i-j) k_j^T v_j)^T: the causal scan of
    (do, v, k) from S0^T (each segment from its start, read transposed). dk and dv: the
    anti-causal scans of (v, do, q) from dS^T and (k, q, do) from dS, the gradient state,
    which starts at dS_N and ends as dS0 (split: each segment from its start, the reverse
    combine of the segments' own gradient states); or with ``fused`` one anti-causal scan
    that shares dS between them.
    """
    don = _token_stride(do, launches.plan[2] is not None)
    if don is None:
        do, don = do.contiguous(), do.shape[-1]
    spec = launches.bwd(dht is not None, need_dh0, don)
    # empty_like keeps each input's layout: the gradients are written where they lie
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dh0 = None
    b, h, _, d = q.shape
    e = v.shape[-1]
    if need_dh0:
        dh0 = q.new_empty(b, h, d, e, dtype=torch.float32)
    dev = q.device.index
    decay = q if decay is None else decay
    dht_, dh0_ = (q if dht is None else dht), (q if dh0 is None else dh0)
    if launches.segments is None:
        # dq: the scan's state is S^T, read from h0 transposed.
        _launch(spec[0], (do, v, k, dq, decay, q if h0 is None else h0, q), dev)
        if len(spec) == 2:  # fused dk/dv
            _launch(spec[1], (q, k, v, do, dk, dv, decay, dht_, dh0_), dev)
        else:
            _launch(spec[1], (v, do, q, dk, decay, dht_, q), dev)
            _launch(spec[2], (k, q, do, dv, decay, dht_, dh0_), dev)
        return dq, dk, dv, dh0
    dq_scan, own_scan, combine, dk_scan, dv_scan = spec
    _launch(dq_scan, (do, v, k, dq, decay, starts, q), dev)
    own = _states(q, launches.segments[1], e, torch.float32)
    _launch(own_scan, (q, q, do, q, decay, q, own), dev)
    ds_starts = own if launches.state_dtype == torch.float32 else torch.empty_like(
        own, dtype=launches.state_dtype)
    _launch(combine, (own, ds_starts, decay, dht_, dh0_), dev)
    del own
    _launch(dk_scan, (v, do, q, dk, decay, ds_starts, q), dev)
    _launch(dv_scan, (k, q, do, dv, decay, ds_starts, q), dev)
    return dq, dk, dv, dh0


class Lightning2Function(torch.autograd.Function):
    """apply(q, k, v, decay, h0, output_final_state, launches) -> o or (o, ht).

    Inputs validated and contiguous; ``launches`` the call's ``_Launches``."""

    @staticmethod
    def forward(ctx, q, k, v, decay, h0, output_final_state, launches):
        o, ht, starts = _lightning2_fwd(q, k, v, decay, h0, output_final_state, launches)
        ctx.save_for_backward(q, k, v, decay, h0, starts)
        ctx.launches = launches
        ctx.need_dh0 = h0 is not None and ctx.needs_input_grad[4]
        if ht is None:
            return o
        return o, ht

    @staticmethod
    def backward(ctx, do, dht=None):
        q, k, v, decay, h0, starts = ctx.saved_tensors
        dq, dk, dv, dh0 = _lightning2_bwd(
            q, k, v, do, decay, h0, starts,
            None if dht is None else dht.contiguous(), ctx.need_dh0, ctx.launches,
        )
        return dq, dk, dv, None, dh0, None, None


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def lightning_attn2(q, k, v, decay=None, initial_state=None, output_final_state=False, *,
                    tf32=False, _config=None):
    """Lightning Attention-2: causal linear attention with per-head exponential decay.

    o_t = q_t · (lambda_h^(t+1) S0 + sum_{j<=t} lambda_h^(t-j) k_j^T v_j), with
    lambda_h = exp(-decay[h]); no softmax and no 1/sqrt(D) scale. Differentiable in q, k, v
    and the initial state (also through the final state).

    Args:
        q: (B, H, N, D) query, float16, bfloat16 or float32, on CUDA (or the CPU under
            TRITON_INTERPRET=1).
        k: (B, H, N, D) key, same dtype and device as q.
        v: (B, H, N, E) value, same dtype and device as q.
        decay: None (lambda = 1, plain causal linear attention) or a floating tensor (H,)
            of rates s_h >= 0 on q's device, e.g. ``default_decay(H, device)``. The sign
            is checked only for CPU tensors (a GPU check would sync the host). No gradient.
        initial_state: None (zeros) or a float32 (B, H, D, E) state S0, as FLA's ops take it:
            the final state of the previous piece of the sequence.
        output_final_state: also return the final state S_N (B, H, D, E), float32.
        tf32: float32 inputs only: TF32 tensor-core products (10-bit mantissa) instead of
            IEEE fp32 ones. Relative error against float64 then 1.5e-3 (H100, N = 4k,
            D = E = 128, decay; tested < 3e-3) instead of ~4e-7; 35x faster than IEEE
            fp32 (CUDA cores), still 6x slower than bf16.

    Returns:
        o: (B, H, N, E) in v's dtype; with ``output_final_state``, ``(o, final_state)``.

    Limits: D and E in [16, 256] (any value); any B, H >= 1, N >= 0 with (N + 128) * max(D, E)
    < 2^31. Accumulation and the running state are fp32; the state is cast to the input dtype
    for the tensor-core products, as in the official kernels.

    Layouts: contiguous (B, H, N, X) tensors, and (B, N, H, X) tensors seen through
    ``transpose(1, 2)`` (what a model's projections give), are read in place; o is made in
    v's layout and each gradient in its input's layout, so a model needs no copies. Other
    strides are copied first.

    Sequence split: where B*H*(E/64) programs would not fill the GPU (batch 1, 8 heads),
    each sequence is cut into segments (``segment_length``), each segment's own state is
    computed, the states before it are combined (``prefix_states``) and each segment runs
    from its start; the backward mirrors it. Memory: the forward allocates o (and the final
    state), the backward dq, dk, dv (and the initial state's gradient); a split call keeps
    its segments' starts (B, H, S, D, E) between forward and backward, bf16 for bf16 inputs
    (at most 5% of q, k, v by construction), and while it runs twice that in fp32.
    """
    # One dictionary lookup when this call's shapes, strides, dtypes and devices were seen
    # before: they passed validation, and the launch settings (tiles, flags, layouts) are
    # kept with them.
    key = (input_key(q, k, v, decay, initial_state), bool(output_final_state), bool(tf32),
           None if _config is None else tuple(sorted(_config.items())))
    if key[0] is not None:
        key = (*key, q.stride(), k.stride(), v.stride())
    launches = _CALLS.get(key)
    if launches is None:
        check_inputs(q, k, v, decay, initial_state, on_cpu=_ON_CPU)
        b, h, n, d = q.shape
        e = v.shape[-1]
        plan = _plan(d, e, q.dtype, bool(tf32) and q.dtype == torch.float32, _config)
        seg = (_config or {}).get("segment")
        if seg is None:
            seg = segment_length(b, h, n, d, e, q.dtype, sm_count(q.device))
        fused = plan[2] is not None
        if fused:  # the fused dk/dv scan runs whole, contiguous sequences only
            seg = n
        tokens = [_token_stride(x, fused) for x in (q, k, v)]
        copy = tuple(s is None for s in tokens)
        tokens = tuple(x.shape[-1] if s is None else s for x, s in zip((q, k, v), tokens))
        launches = _Launches(plan, (b, h, n, d, e), q.dtype, decay is not None,
                             initial_state is not None, bool(output_final_state),
                             max(1, min(int(seg), n)), tokens, copy)
        if key[0] is not None:
            if len(_CALLS) > 4096:
                _CALLS.clear()
            _CALLS[key] = launches
    check_rates(decay)
    copy_q, copy_k, copy_v = launches.copy
    if copy_q:
        q = q.contiguous()
    if copy_k:
        k = k.contiguous()
    if copy_v:
        v = v.contiguous()
    if decay is not None:
        if decay.requires_grad:
            decay = decay.detach()
        if decay.dtype != torch.float32 or not decay.is_contiguous():
            decay = decay.to(torch.float32).contiguous()
    if initial_state is not None and not initial_state.is_contiguous():
        initial_state = initial_state.contiguous()
    if torch.is_grad_enabled() and (
        q.requires_grad or k.requires_grad or v.requires_grad
        or (initial_state is not None and initial_state.requires_grad)
    ):
        return Lightning2Function.apply(q, k, v, decay, initial_state, output_final_state,
                                        launches)
    o, ht, _ = _lightning2_fwd(q, k, v, decay, initial_state, output_final_state, launches)
    return (o, ht) if output_final_state else o


def prefix_states(states, decay=None, length=1, last_length=None, initial_state=None, *,
                  reverse=False, output_final_state=False, dtype=torch.float32):
    """The state each of S consecutive segments of a sequence starts from, given each
    segment's own state: the combine of the split scan, and of ``lightning2_sp`` across GPUs.

    Causal (per head, lambda = exp(-decay[h]), L_r the length of segment r)::

        starts_0 = S0,   starts_r = lambda^(L_(r-1)) starts_(r-1) + states_(r-1)
        final    = lambda^(L_(S-1)) starts_(S-1) + states_(S-1)

    so starts_r = lambda^(L_0 + ... + L_(r-1)) S0 + sum_{j<r} lambda^(L_(j+1) + ... +
    L_(r-1)) states_j. ``reverse``: the mirror (starts_(S-1) = S0, running down to
    segment 0), which is also the adjoint of the causal combine: the gradient of the
    starts goes to the states through it.

    Args:
        states: (B, H, S, D, E) float32, contiguous: segment r's own state, from a zero start,
            anchored at its last token (causal; ``lightning_attn2(..., output_final_state=
            True)`` of the segment alone gives it).
        decay: None (lambda = 1) or float32 rates (H,) on the states' device.
        length: tokens of every segment but the last; ``last_length`` the last (default
            ``length``).
        initial_state: None (zeros) or float32 (B, H, D, E), S0.
        output_final_state: also return the state after the last segment (float32).
        dtype: of the starts returned (float32, or bfloat16 to keep them for a backward).

    Returns:
        starts (B, H, S, D, E) in ``dtype``; with ``output_final_state``, (starts, final).
    """
    if states.dim() != 5 or states.dtype != torch.float32 or not states.is_contiguous():
        raise ValueError("states must be a contiguous float32 tensor (B, H, S, D, E)")
    b, h, count, d, e = states.shape
    if initial_state is not None and initial_state.shape != (b, h, d, e):
        raise ValueError(f"initial_state must have shape (B, H, D, E) = {(b, h, d, e)}")
    starts = torch.empty_like(states, dtype=dtype)
    final = states.new_empty(b, h, d, e) if output_final_state else None
    if count:
        last = length if last_length is None else last_length
        spec = _combine_launch((b, h, d, e), (length, count, last), has_decay=decay is not None,
                               has_h0=initial_state is not None,
                               store_ht=output_final_state, reverse=reverse, dtype=dtype)
        h0 = None if initial_state is None else initial_state.float().contiguous()
        dec = None if decay is None else decay.float().contiguous()
        pick = lambda t: states if t is None else t  # noqa: E731 - unused pointers
        _launch(spec, (states, starts, pick(dec), pick(h0), pick(final)), states.device.index)
    elif output_final_state:
        final.copy_(0 if initial_state is None else initial_state)
    return (starts, final) if output_final_state else starts


@functools.cache
def sm_count(device: torch.device) -> int:
    """SMs of a CUDA device (the split's target); ``NOMINAL_SMS`` for the interpreter."""
    if device.type != "cuda":
        return NOMINAL_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


_CALLS: dict = {}  # (input_key, output_final_state, tf32, config) -> _Launches
_ON_CPU = interpreted(_lightning2_scan_kernel)
