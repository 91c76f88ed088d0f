"""Lightning Attention-2 (arXiv 2401.04658) forward and backward in Triton.

Per head h with decay rate s_h > 0 and lambda_h = exp(-s_h) (no softmax, no scale)::

    o_t = q_t · sum_{j<=t} lambda_h^(t-j) k_j^T v_j

The paper's tiling: the sequence is cut into blocks of BLOCK_N tokens; inside a block the
masked product (Q K^T * M) V uses the decay mask M built on chip; between blocks a running
state S = sum_j lambda^(.) k_j^T v_j of shape [D, E] carries the past, in fp32 registers,
decayed by lambda^BLOCK_N per block. Nothing of size N x D x E ever reaches HBM.

One kernel does all of it. The backward is three scans of the very same shape
(see ``_lightning2_bwd``), so there is one causal-scan kernel with a REVERSE flag rather
than a forward kernel and near-copies for dq, dk and dv. Parallelism comes from
B x H x (value dim / BLOCK_V) programs, each scanning the whole sequence for one slice
of the value dim; the state slice [D, BLOCK_V] stays on chip.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_MIN_DIM, _MAX_DIM = 16, 256
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def default_decay(num_heads: int, device=None) -> torch.Tensor:
    """The paper's ALiBi-style decay rates s_h = 2^(-8h/H), h = 1..H: float32 ``(H,)``."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1; got {num_heads}")
    h = torch.arange(1, num_heads + 1, dtype=torch.float64)
    return torch.pow(2.0, -8.0 * h / num_heads).to(device=device, dtype=torch.float32)


# --------------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["N"])
def _lightning2_scan_kernel(
    Q,  # [B*H, N, DK]
    K,  # [B*H, N, DK]
    V,  # [B*H, N, DV]
    O,  # [B*H, N, DV], written in O's dtype
    S,  # [H] float32 decay rates (unused without HAS_DECAY)
    Q2,  # a second scan of the same shape, run by the upper programs when PAIRED
    K2,
    V2,
    O2,
    N,
    H: tl.constexpr,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_V: tl.constexpr,
    HAS_DECAY: tl.constexpr,
    REVERSE: tl.constexpr,
    PRECISION: tl.constexpr,
    PAIRED: tl.constexpr,
):
    """o_t = q_t · sum_{j<=t} lambda^(t-j) k_j^T v_j (REVERSE: sum over j >= t, lambda^(j-t))."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    if PAIRED:
        # The dk and dv scans both read q and do, block by block in the same order: run as
        # neighbours in one launch, each block of q and do comes from HBM once (then L2).
        if i_v >= tl.cdiv(DV, BLOCK_V):
            Q, K, V, O = Q2, K2, V2, O2
            i_v -= tl.cdiv(DV, BLOCK_V)
    i_h = i_bh % H
    # int64 base offsets: B*H*N*D passes 2^31 at long N.
    q_base = Q + i_bh.to(tl.int64) * N * DK
    k_base = K + i_bh.to(tl.int64) * N * DK
    v_base = V + i_bh.to(tl.int64) * N * DV
    o_base = O + i_bh.to(tl.int64) * N * DV

    o_n = tl.arange(0, BLOCK_N)
    o_k = tl.arange(0, BLOCK_DK)
    o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
    m_k = o_k < DK
    m_v = o_v < DV
    # Position inside the block counted along the scan direction: the reverse scan is the
    # forward scan on the block read backwards, so every decay exponent below uses o_r.
    if REVERSE:
        o_r = BLOCK_N - 1 - o_n
    else:
        o_r = o_n
    m_causal = o_r[:, None] >= o_r[None, :]
    if HAS_DECAY:
        b_s = tl.load(S + i_h).to(tl.float32) * 1.4426950408889634  # rate in log2 units
        dist = (o_r[:, None] - o_r[None, :]).to(tl.float32)
        # where() before use: exp2 of the masked-out (negative) distances may be inf.
        b_m = tl.where(m_causal, tl.exp2(-b_s * dist), 0.0)  # [BLOCK_N, BLOCK_N]
        b_q_decay = tl.exp2(-b_s * (o_r + 1).to(tl.float32))  # state age seen by row i
        b_k_decay = tl.exp2(-b_s * (BLOCK_N - 1 - o_r).to(tl.float32))  # age at block end
        b_block_decay = tl.exp2(-b_s * BLOCK_N)

    b_h = tl.zeros([BLOCK_DK, BLOCK_V], dtype=tl.float32)  # running state, fp32 on chip
    NT = tl.cdiv(N, BLOCK_N)
    for i in range(0, NT):
        if REVERSE:
            i_t = NT - 1 - i
        else:
            i_t = i
        o_t = i_t * BLOCK_N + o_n
        m_t = o_t < N
        # Masked loads fill zeros past N and DK, so partial blocks and padded dims are exact.
        p_q = q_base + o_t[:, None] * DK + o_k[None, :]
        p_k = k_base + o_t[:, None] * DK + o_k[None, :]
        p_v = v_base + o_t[:, None] * DV + o_v[None, :]
        b_q = tl.load(p_q, mask=m_t[:, None] & m_k[None, :], other=0.0)  # [BLOCK_N, BLOCK_DK]
        b_k = tl.load(p_k, mask=m_t[:, None] & m_k[None, :], other=0.0)  # [BLOCK_N, BLOCK_DK]
        b_v = tl.load(p_v, mask=m_t[:, None] & m_v[None, :], other=0.0)  # [BLOCK_N, BLOCK_V]

        # Intra-block: (Q K^T * M) V.
        b_a = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)  # [BLOCK_N, BLOCK_N]
        if HAS_DECAY:
            b_a = b_a * b_m
        else:
            b_a = tl.where(m_causal, b_a, 0.0)
        b_o = tl.dot(b_a.to(b_v.dtype), b_v, input_precision=PRECISION)  # [BLOCK_N, BLOCK_V]
        # Inter-block: the state of all earlier blocks, aged to each row.
        b_inter = tl.dot(b_q, b_h.to(b_q.dtype), input_precision=PRECISION)
        if HAS_DECAY:
            b_o += b_inter * b_q_decay[:, None]
            b_vw = (b_v * b_k_decay[:, None]).to(b_v.dtype)
            b_h = b_h * b_block_decay + tl.dot(tl.trans(b_k), b_vw, input_precision=PRECISION)
        else:
            b_o += b_inter
            b_h += tl.dot(tl.trans(b_k), b_v, input_precision=PRECISION)
        p_o = o_base + o_t[:, None] * DV + o_v[None, :]
        tl.store(p_o, b_o.to(O.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _config(dk: int, dv: int, dtype: torch.dtype) -> dict:
    """Tiles by head dim and dtype (measured on an H100: benchmarks/notes/lightning2.md)."""
    block_v = min(64, triton.next_power_of_2(dv))
    if dtype == torch.float32:
        # fp32 dots run in IEEE fp32 on CUDA cores: small tiles keep compile time sane.
        return dict(BLOCK_N=32, BLOCK_V=min(32, block_v), num_warps=4, num_stages=1)
    if triton.next_power_of_2(dk) <= 128:
        return dict(BLOCK_N=64, BLOCK_V=block_v, num_warps=4, num_stages=4)
    return dict(BLOCK_N=32, BLOCK_V=block_v, num_warps=8, num_stages=3)


def _scan(q, k, v, decay, out_dtype, reverse, config=None, pair=None):
    """Allocate, grid, launch: one causal (or anti-causal) decayed scan, o (B, H, N, DV).

    ``pair``: an optional second (q, k, v) of the same shapes, scanned in the same launch;
    then both outputs are returned.
    """
    b, h, n, dk = q.shape
    dv = v.shape[-1]
    cfg = {**_config(dk, dv, q.dtype), **(config or {})}
    o = torch.empty(b, h, n, dv, dtype=out_dtype, device=q.device)
    q2, k2, v2 = pair if pair is not None else (q, k, v)
    o2 = torch.empty_like(o) if pair is not None else o
    grid = (triton.cdiv(dv, cfg["BLOCK_V"]) * (2 if pair is not None else 1), b * h)
    _lightning2_scan_kernel[grid](
        q, k, v, o, decay if decay is not None else q, q2, k2, v2, o2, n,
        H=h, DK=dk, DV=dv,
        BLOCK_N=cfg["BLOCK_N"], BLOCK_DK=triton.next_power_of_2(dk), BLOCK_V=cfg["BLOCK_V"],
        HAS_DECAY=decay is not None, REVERSE=reverse,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", PAIRED=pair is not None,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return (o, o2) if pair is not None else o


def _lightning2_fwd(q, k, v, decay, config=None):
    """o = q · (decayed causal sum of k^T v): (B, H, N, E)."""
    return _scan(q, k, v, decay, v.dtype, reverse=False, config=config)


def _lightning2_bwd(q, k, v, do, decay, config=None):
    """dq, dk, dv as three scans of the forward's shape (derivation in the notes).

    dq_i = sum_{j<=i} lambda^(i-j) (do_i·v_j) k_j: the causal scan of (do, v, k);
    dk_j = sum_{t>=j} lambda^(t-j) (v_j·do_t) q_t: the anti-causal scan of (v, do, q);
    dv_j = sum_{t>=j} lambda^(t-j) (k_j·q_t) do_t: the anti-causal scan of (k, q, do).
    Each writes its gradient once in the input dtype: no fp32 buffers, no temporaries.
    """
    dq = _scan(do, v, k, decay, q.dtype, reverse=False, config=config)
    paired = (config or {}).get("paired", True)
    if paired and q.shape[-1] == v.shape[-1]:  # D == E: the dk and dv scans share one shape
        dk, dv = _scan(v, do, q, decay, k.dtype, reverse=True, config=config, pair=(k, q, do))
    else:
        dk = _scan(v, do, q, decay, k.dtype, reverse=True, config=config)
        dv = _scan(k, q, do, decay, v.dtype, reverse=True, config=config)
    return dq, dk, dv


class Lightning2Function(torch.autograd.Function):
    """apply(q, k, v, decay, config=None); ``config`` overrides the tiles (BLOCK_N, BLOCK_V,
    num_warps, num_stages, paired) for benchmarks. Inputs must be validated and contiguous."""

    @staticmethod
    def forward(ctx, q, k, v, decay, config=None):
        o = _lightning2_fwd(q, k, v, decay, config)
        ctx.save_for_backward(q, k, v, decay)
        ctx.config = config
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, decay = ctx.saved_tensors
        dq, dk, dv = _lightning2_bwd(q, k, v, do.contiguous(), decay, ctx.config)
        return dq, dk, dv, None, None


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def _validate(q, k, v, decay):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = getattr(t, "shape", t)
            raise ValueError(f"{name} must be a 4-D tensor (B, H, N, D); got {shape}")
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"expected q, k (B, H, N, D) and v (B, H, N, E); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.dtype not in _DTYPES:
        raise ValueError(f"q, k, v must be float16, bfloat16 or float32; got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"lightning_attn2 needs CUDA tensors (or TRITON_INTERPRET=1): {q.device}")
    for name, d in (("D", q.shape[-1]), ("E", v.shape[-1])):
        if not _MIN_DIM <= d <= _MAX_DIM:
            raise ValueError(f"head dim {name} must be in [{_MIN_DIM}, {_MAX_DIM}]; got {d}")
    if q.shape[2] < 1 or q.shape[0] < 1 or q.shape[1] < 1:
        raise ValueError(f"B, H and N must be >= 1; got {tuple(q.shape[:3])}")
    if decay is None:
        return
    if not isinstance(decay, torch.Tensor) or decay.shape != (q.shape[1],):
        shape = getattr(decay, "shape", decay)
        raise ValueError(f"decay must be a tensor of shape (H,) = ({q.shape[1]},); got {shape}")
    if not decay.is_floating_point():
        raise ValueError(f"decay must be a floating tensor; got {decay.dtype}")
    if decay.device != q.device:
        raise ValueError(f"decay must be on q's device {q.device}; got {decay.device}")
    # Checking the values on a GPU would cost a host sync per call, so only CPU tensors are
    # checked; on the GPU a rate s <= 0 is computed faithfully as lambda = exp(-s) >= 1.
    if decay.device.type == "cpu" and not bool((decay > 0).all()):
        raise ValueError("decay rates must be > 0 (lambda = exp(-s) < 1)")


def lightning_attn2(q, k, v, decay=None):
    """Lightning Attention-2: causal linear attention with per-head exponential decay.

    o_t = q_t · sum_{j<=t} lambda_h^(t-j) k_j^T v_j with lambda_h = exp(-decay[h]);
    no softmax and no 1/sqrt(D) scale. Differentiable in q, k and v.

    Args:
        q: (B, H, N, D) query, float16, bfloat16 or float32, on CUDA.
        k: (B, H, N, D) key, same dtype and device as q.
        v: (B, H, N, E) value, same dtype and device as q.
        decay: None (lambda = 1, plain causal linear attention) or a floating tensor (H,)
            of decay rates s_h > 0 on q's device, e.g. ``default_decay(H, device)``.
            Positivity is checked only for CPU tensors (a GPU check would sync the host).

    Returns:
        o: (B, H, N, E) in v's dtype.

    Limits: D and E in [16, 256] (any value, not only powers of two); any B, H, N >= 1.
    Accumulation and the running state [D, E] are fp32; the state is cast to the input
    dtype for the tensor-core product with q, as in the official kernels. Non-contiguous
    inputs are copied to contiguous ones. Memory: the forward allocates only o, the
    backward only dq, dk and dv (in the input dtype; no fp32 buffers). fp32 inputs use
    IEEE fp32 products: exact to fp32 rounding but ~200x slower than bf16.
    """
    _validate(q, k, v, decay)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if decay is not None:
        decay = decay.to(torch.float32).contiguous()
    return Lightning2Function.apply(q, k, v, decay)
