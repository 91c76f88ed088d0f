"""Attention with one sequence split over the ranks of a torch.distributed process group.

Each rank holds one contiguous piece of every sequence, ``L = N / W`` tokens (rank r holds
tokens ``r*L .. (r+1)*L - 1``), and calls the function on its piece: q, k ``(B, H, L, D)``,
v ``(B, H, L, E)``; it returns its piece of the output ``(B, H, L, E)``. Every rank of the
group must make the same calls in the same order (they are collectives).

``lightning2_sp`` (LASP-2 style, arXiv 2502.07563; written from the paper's equations):

    forward    S_r   = sum_{j in piece r} lambda^(L-1-j) k_j^T v_j     (local state, zero start)
               one all-gather of the S_r, (B, H, D, E) float32 each
               S0_r  = sum_{j<r} lambda^(L(r-1-j)) S_j     (decayed prefix: kernels' prefix_states)
               o_r   = lightning_attn2(q_r, k_r, v_r, decay, initial_state=S0_r)
    backward   dS0_r from the kernel's backward (the gradient to its initial state)
               one all-gather of the dS0_r
               dS_j  = sum_{r>j} lambda^(L(r-1-j)) dS0_r              (the mirror of the prefix)
               dk, dv += the local state's gradients (chunked matmuls)

So a call moves two states per rank (one forward, one backward), whatever the length: a ring
all-gather of W tensors of ``B*H*D*E*4`` bytes sends ``(W-1) * B*H*D*E*4`` bytes per rank
(``state_bytes_sent``). ``BYTES_SENT`` counts what this process really hands to collectives.

The local state is a chunked matmul in the inputs' dtype (fp32 accumulation inside the GEMM,
the result widened to fp32); the kernel itself casts its initial state to the input dtype for
its tensor-core products, so this loses nothing the kernel keeps. The last rank's state is
used by no one: it sends zeros and computes none. With W = 1 there is no state to exchange and
the call is ``lightning_attn2`` itself.

``sdpa_ring``: causal softmax attention through PyTorch's own context parallelism
(``torch.distributed.tensor.experimental.context_parallel``) around SDPA pinned to its flash
backend, the keys and values passed around the ring (rotate method ``alltoall``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

# Tokens per chunk of the local state's matmul: bounds its temporaries (k x decay) to
# B*H*CHUNK*D elements instead of a copy of k.
STATE_CHUNK = 65536
STATE_ELEMENT_BYTES = 4  # states travel in float32
BYTES_SENT = [0]  # bytes this process has handed to collectives (counted by tests)
NEEDS_GROUP = ("needs torch.distributed: run under torchrun "
               "(torchrun --nproc-per-node N -m attnbench run ...)")


def group_problem() -> str:
    """Why no sequence-parallel call can run in this process ("" if a group is up)."""
    if not dist.is_available():
        return "this torch has no torch.distributed"
    if not dist.is_initialized():
        return NEEDS_GROUP
    return ""


def state_bytes_sent(batch: int, heads: int, d: int, e: int, world_size: int) -> int:
    """Bytes one rank sends in one all-gather of the states (ring: W-1 states)."""
    return (world_size - 1) * batch * heads * d * e * STATE_ELEMENT_BYTES


def _all_gather(x: torch.Tensor, group) -> list[torch.Tensor]:
    x = x.contiguous()
    world = dist.get_world_size(group)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x, group=group)
    BYTES_SENT[0] += (world - 1) * x.numel() * x.element_size()
    return parts


def _key_decay(decay, length: int, start: int, stop: int, device) -> torch.Tensor | None:
    """lambda^(L-1-j) for tokens j in [start, stop) of a piece: (1, H, stop-start, 1) fp32."""
    if decay is None:
        return None
    j = torch.arange(start, stop, device=device, dtype=torch.float32)
    rates = decay.float().view(1, -1, 1, 1).to(device)  # [1, H, 1, 1]
    return torch.exp(-rates * (length - 1 - j).view(1, 1, -1, 1))  # [1, H, C, 1]


class _LocalState(torch.autograd.Function):
    """S = sum_j lambda^(L-1-j) k_j^T v_j over the piece, float32 (B, H, D, E); recomputes
    its chunks in the backward instead of keeping k x decay."""

    @staticmethod
    def forward(ctx, k, v, decay):
        b, h, n, d = k.shape
        state = torch.zeros(b, h, d, v.shape[-1], device=k.device, dtype=torch.float32)
        for start in range(0, n, STATE_CHUNK):
            stop = min(n, start + STATE_CHUNK)
            kc = k[:, :, start:stop]  # [B, H, C, D]
            w = _key_decay(decay, n, start, stop, k.device)
            if w is not None:
                kc = (kc * w).to(k.dtype)
            state += (kc.transpose(-1, -2) @ v[:, :, start:stop]).float()  # [B, H, D, E]
        ctx.save_for_backward(k, v, decay)
        return state

    @staticmethod
    def backward(ctx, d_state):
        k, v, decay = ctx.saved_tensors
        n = k.shape[2]
        ds = d_state.to(k.dtype)  # [B, H, D, E]
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        for start in range(0, n, STATE_CHUNK):
            stop = min(n, start + STATE_CHUNK)
            w = _key_decay(decay, n, start, stop, k.device)
            kc = k[:, :, start:stop]
            if w is not None:
                kc = (kc * w).to(k.dtype)
            gk = v[:, :, start:stop] @ ds.transpose(-1, -2)  # [B, H, C, D]
            dk[:, :, start:stop] = gk if w is None else (gk * w).to(k.dtype)
            dv[:, :, start:stop] = kc @ ds  # [B, H, C, E]
        return dk, dv, None


class _ExchangeStates(torch.autograd.Function):
    """Local states in, this rank's initial state out: one all-gather forward (the states),
    one backward (the initial states' gradients), each rank combining what it needs with the
    kernels' own combine of segment states (``prefix_states``: the ranks are the segments)."""

    @staticmethod
    def forward(ctx, state, decay, length, group):
        from attnbench.kernels import prefix_states

        rank = dist.get_rank(group)
        states = torch.stack(_all_gather(state, group), dim=2)  # [B, H, W, D, E]
        # S0_r = sum_{j<r} lambda^(L(r-1-j)) S_j
        s0 = prefix_states(states, decay, length)[:, :, rank].contiguous()
        ctx.save_for_backward(decay)
        ctx.group, ctx.rank, ctx.length = group, rank, length
        return s0

    @staticmethod
    def backward(ctx, d_s0):
        from attnbench.kernels import prefix_states

        (decay,) = ctx.saved_tensors
        grads = torch.stack(_all_gather(d_s0, ctx.group), dim=2)  # [B, H, W, D, E]
        # dS_j = sum_{r>j} lambda^(L(r-1-j)) dS0_r: the reverse combine (its adjoint)
        d_state = prefix_states(grads, decay, ctx.length, reverse=True)[:, :, ctx.rank]
        return d_state.contiguous(), None, None, None


def lightning2_sp(q, k, v, decay=None, group=None):
    """Lightning-2 on this rank's piece of a sequence split over ``group`` (default: the world).

    Args:
        q, k: (B, H, L, D) this rank's piece (L = N / W tokens, rank order = sequence order).
        v: (B, H, L, E).
        decay: None or per-head rates (H,), as ``lightning_attn2`` takes them.
        group: the process group the sequence is split over.

    Returns:
        (B, H, L, E): this rank's piece of the causal output over the whole sequence.
        Differentiable in q, k and v; the gradients reach earlier ranks' pieces.
    """
    from attnbench.kernels import lightning_attn2

    problem = group_problem()
    if problem:
        raise RuntimeError(problem)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if world == 1:
        return lightning_attn2(q, k, v, decay)
    b, h, n, d = q.shape
    if rank < world - 1:
        state = _LocalState.apply(k, v, decay)
    else:  # no rank after this one needs its state
        state = q.new_zeros(b, h, d, v.shape[-1], dtype=torch.float32)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        # every rank's graph must hold the exchange, or one rank would skip the backward
        # all-gather the others wait in (the last rank's zeros, a piece with only q trained)
        if not state.requires_grad:
            state = state.detach().requires_grad_()
    rates = None if decay is None else decay.float().to(q.device).contiguous()
    s0 = _ExchangeStates.apply(state, rates, n, group)
    # rank 0 gets zeros, but its output must depend on them: its backward then joins the
    # backward all-gather as every other rank's does.
    return lightning_attn2(q, k, v, decay, initial_state=s0)


# --- softmax: PyTorch's context parallelism --------------------------------------------------


def _cp_module():
    """The module of PyTorch's context parallelism with the dispatcher we need (its place
    moved between torch releases), or None."""
    import importlib

    for name in ("torch.distributed.tensor.experimental._context_parallel._attention",
                 "torch.distributed.tensor.experimental._attention"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "_enable_context_parallel_dispatcher_impl"):
            return module
    return None


def sdpa_ring_problem(device: str) -> str:
    """Why ``sdpa_ring`` cannot run on ``device`` with this torch ("" if it can)."""
    if _cp_module() is None:
        return (f"torch {torch.__version__} has no context-parallel SDPA dispatcher "
                "(torch.distributed.tensor.experimental: _enable_context_parallel_dispatcher_impl)")
    if device != "cuda":
        return ("PyTorch's context parallelism rings only the CUDA SDPA kernels (flash, "
                "efficient, cuDNN); on the CPU SDPA calls "
                "aten._scaled_dot_product_flash_attention_for_cpu, which it cannot shard")
    return group_problem()


_MESHES: dict = {}


def sdpa_ring(q, k, v, decay=None, group=None):
    """Causal softmax on this rank's piece (same convention as ``lightning2_sp``), through
    ``context_parallel`` with SDPA's flash backend and the ring rotation (alltoall).

    Inside ``context_parallel`` SDPA takes plain tensors as the local shards of the sequence
    (dim 2); its head-tail load balancing is turned off, as the pieces come in rank order.
    NotImplementedError, with the reason, where it cannot run."""
    if decay is not None:
        raise ValueError("softmax attention takes no decay")
    problem = sdpa_ring_problem(q.device.type)
    if problem:
        raise NotImplementedError(problem)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        return _RingFunction.apply(q, k, v, group)
    return _ring(q, k, v, group)


@contextlib.contextmanager
def _ring_dispatch(device_type: str, group):
    """SDPA on plain tensors taken as the local shards (dim 2) of a sequence split over
    ``group``: the dispatcher ``context_parallel(mesh, buffers=...)`` enables once it has
    sharded full-length buffers (our pieces are already the shards), pinned on CUDA to
    SDPA's flash backend, keys and values rotated around the ring (alltoall), in rank order
    (no head-tail load balancing). The CPU keeps SDPA's own choice, which it cannot shard."""
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cp = _cp_module()
    world = dist.get_world_size(group)
    key = (device_type, world, id(group))
    if key not in _MESHES:
        _MESHES[key] = (init_device_mesh(device_type, (world,)) if group is None
                        else DeviceMesh.from_group(group, device_type))
    cp.set_rotate_method("alltoall")
    balance = cp._cp_options.enable_load_balance
    cp._cp_options.enable_load_balance = False
    pin = (sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if device_type == "cuda"
           else contextlib.nullcontext())
    cp._enable_context_parallel_dispatcher_impl(seq_dim=2, mesh=_MESHES[key])
    try:
        with pin:
            yield
    finally:
        cp._disable_context_parallel_dispatcher_impl()
        cp._cp_options.enable_load_balance = balance


def _local(x):
    return x.to_local() if hasattr(x, "to_local") else x


def _ring(q, k, v, group=None):
    import torch.nn.functional as F

    with _ring_dispatch(q.device.type, group):
        return _local(F.scaled_dot_product_attention(q, k, v, is_causal=True))


class _RingFunction(torch.autograd.Function):
    """The ring's forward and backward each inside the dispatcher (context_parallel's own
    usage runs both inside its context; a benchmark's backward comes later, and other SDPA
    calls of the process must not be sharded in between)."""

    @staticmethod
    def forward(ctx, q, k, v, group):
        import torch.nn.functional as F

        leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        with torch.enable_grad(), _ring_dispatch(q.device.type, group):
            out = F.scaled_dot_product_attention(*leaves, is_causal=True)
        ctx.leaves, ctx.out, ctx.group = leaves, out, group
        return _local(out).detach()

    @staticmethod
    def backward(ctx, d_out):
        with _ring_dispatch(d_out.device.type, ctx.group):
            target = ctx.out
            if hasattr(target, "to_local"):  # a DTensor: its gradient in the same placement
                from torch.distributed.tensor import DTensor

                d_out = DTensor.from_local(d_out.contiguous(), target.device_mesh,
                                           target.placements, run_check=False)
            grads = torch.autograd.grad(target, ctx.leaves, d_out, retain_graph=True)
        return (*(_local(g) for g in grads), None)


def kv_bytes_sent(batch: int, heads: int, local_len: int, d: int, e: int, element: int,
                  world_size: int) -> int:
    """Bytes one rank sends passing its keys and values around the ring once (W-1 hops)."""
    return (world_size - 1) * batch * heads * local_len * (d + e) * element
