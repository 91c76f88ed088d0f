"""Every attention mechanism attnbench knows, in one list.

A mechanism is data: what it is, what it can take, what it needs, how much work it does and
which float64 oracle checks it. ``available()`` says yes, or no with a reason a person can
act on. Nothing here imports a mechanism's package until the mechanism is loaded or asked
whether it is available, and nothing is read from the environment at import.

Mechanism callables share one signature, ``fn(q, k, v, decay) -> o``, with q, k, v and o in
the mechanism's native layout (``bhnd`` = (B, H, N, D) or ``bnhd`` = (B, N, H, D)) and decay
either None or the per-head rates ``s_h`` of shape (H,). Every hook that depends on the case
(limits, FLOP model, which implementation ran) takes the ``Case``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnbench.case import Case
from attnbench.errors import UsageError

FAMILIES = ("softmax", "linear")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
MODES = ("fwd", "bwd", "fwdbwd", "decode")  # what `attnbench run --modes` takes

AttnFn = Callable[..., torch.Tensor]


# --- FLOP models -------------------------------------------------------------------------
# Forward FLOPs of one call, causal. The backward pass is counted as 2.5x the forward
# (FlashAttention's convention: 5 matmuls against 2, so TFLOP/s compare with its numbers).

BWD_FLOP_FACTOR = 2.5


def quadratic_flops(c: Case) -> float:
    """Q K^T and (.)V over the causal half: 2·b·h·n²·(d+e)/2 (= 4·b·h·n²·d/2 when e = d).

    FlashAttention's convention for causal softmax attention: a multiply-add is 2 FLOPs, the
    causal mask halves the n² score matrix (n²/2, not n(n+1)/2), softmax and scaling are not
    counted, and the backward pass is BWD_FLOP_FACTOR (2.5x) the forward.
    """
    return float(c.batch * c.heads * c.seq_len * c.seq_len * (c.head_dim + c.value_dim))


def linear_state_flops(c: Case) -> float:
    """The state form's useful work: per token k^T v into the state and q·S out, 4·d·e."""
    return 4.0 * c.batch * c.heads * c.seq_len * c.head_dim * c.value_dim


MODE_FLOP_FACTOR = {"fwd": 1.0, "bwd": BWD_FLOP_FACTOR, "fwdbwd": 1.0 + BWD_FLOP_FACTOR}


# --- memory models ------------------------------------------------------------------------
# Bytes a call must hold at least: a lower bound, so a case whose bound exceeds the free
# memory cannot run and is recorded `oom` without being tried (a host OOM would kill the
# process with no record).

ELEMENT_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}


def io_bytes(c: Case) -> float:
    """q, k, v and o; with a backward also do, dq, dk and dv."""
    b, h, n, d, e = c.batch, c.heads, c.seq_len, c.head_dim, c.value_dim
    per_token = 2 * d + 2 * e if c.mode == "fwd" else 4 * d + 4 * e
    return float(ELEMENT_BYTES[c.dtype] * b * h * n * per_token)


def score_matrix_bytes(c: Case) -> float:
    """io_bytes plus one n x n matrix per head (scores or decay mask materialised)."""
    return io_bytes(c) + ELEMENT_BYTES[c.dtype] * c.batch * c.heads * c.seq_len ** 2


def prefix_state_bytes(c: Case) -> float:
    """io_bytes plus every prefix state (n x D x E per head) materialised."""
    return io_bytes(c) + (ELEMENT_BYTES[c.dtype] * c.batch * c.heads * c.seq_len
                          * c.head_dim * c.value_dim)


# --- byte models (the roofline) ------------------------------------------------------------
# The HBM bytes one call of the case's mode must move at least, by what its algorithm keeps in
# memory: inputs read and outputs written once, plus the intermediates the algorithm itself
# stores (the references' n x n matrices and prefix states). What a fused kernel's tiling,
# recomputation or chunk states add is not counted: that is the gap the roofline shows. The
# decay rates (H numbers) are left out. ``fwdbwd`` moves what ``fwd`` and ``bwd`` move.

LSE_BYTES = 4  # FlashAttention keeps one fp32 logsumexp per row for its backward


def _per_mode(c: Case, fwd: float, bwd: float) -> float:
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[c.mode]


def io_traffic(c: Case) -> float:
    """fwd reads q, k, v and writes o; bwd reads q, k, v, do and writes dq, dk, dv.

    The floor of any fused kernel: linear attention's backward needs no o (Lightning-2
    recomputes what it needs from q, k, v and the on-chip state).
    """
    rows, el = c.batch * c.heads * c.seq_len, ELEMENT_BYTES[c.dtype]
    d, e = c.head_dim, c.value_dim
    return float(el * rows * _per_mode(c, 2 * d + 2 * e, (2 * d + 2 * e) + (2 * d + e)))


def softmax_io_traffic(c: Case) -> float:
    """``io_traffic``; the backward also reads o and the forward's fp32 logsumexp per row
    (FlashAttention's backward needs both to rebuild the softmax)."""
    rows = c.batch * c.heads * c.seq_len
    extra = rows * (ELEMENT_BYTES[c.dtype] * c.value_dim + LSE_BYTES)
    return io_traffic(c) + _per_mode(c, 0.0, float(extra))


def _materialised(c: Case, elements: float) -> float:
    """An intermediate of ``elements`` kept in memory in the case's dtype: written and read
    once forward; backward reads the saved one and writes and reads its gradient."""
    return ELEMENT_BYTES[c.dtype] * elements * _per_mode(c, 2, 3)


def score_matrix_traffic(c: Case) -> float:
    """``io_traffic`` plus one n x n matrix per head (scores, or scores times the decay
    mask), whole: PyTorch does not skip the masked half. Autograd's backward of these forms
    reads the saved matrix, not o."""
    return io_traffic(c) + _materialised(c, c.batch * c.heads * c.seq_len ** 2)


def prefix_state_traffic(c: Case) -> float:
    """``io_traffic`` plus every prefix state (n x D x E per head): the cumsum form stores
    them all, the recurrence writes and reads one per step."""
    return io_traffic(c) + _materialised(
        c, c.batch * c.heads * c.seq_len * c.head_dim * c.value_dim)


# --- decode models (mode "decode": one new token per sequence against a context of N) -------
# A state mechanism keeps a float32 (B, H, D, E) state whatever N; a KV-cache mechanism keeps
# the context's keys and values, N + 1 slots (the last one the new token's).


def state_held_bytes(c: Case) -> float:
    """The float32 state a linear mechanism holds for a context of any length."""
    return 4.0 * c.batch * c.heads * c.head_dim * c.value_dim


def kv_held_bytes(c: Case) -> float:
    """The KV cache a softmax mechanism holds: keys and values of N + 1 tokens."""
    return float(ELEMENT_BYTES[c.dtype] * c.batch * c.heads * (c.seq_len + 1)
                 * (c.head_dim + c.value_dim))


def token_traffic(c: Case) -> float:
    """One token's q, k, v read and o written."""
    return float(ELEMENT_BYTES[c.dtype] * c.batch * c.heads * 2 * (c.head_dim + c.value_dim))


def state_decode_traffic(c: Case) -> float:
    """The state read and written once (2 x B x H x D x E x 4 bytes), plus the token."""
    return 2 * state_held_bytes(c) + token_traffic(c)


def kv_decode_traffic(c: Case) -> float:
    """The cache read once over its N + 1 slots, the new key and value written into it,
    plus the token."""
    new = ELEMENT_BYTES[c.dtype] * c.batch * c.heads * (c.head_dim + c.value_dim)
    return kv_held_bytes(c) + new + token_traffic(c)


def state_decode_flops(c: Case) -> float:
    """k^T v into the state and q S out: 4·b·h·d·e, whatever the context (the decay's
    scaling of the state is not counted, as softmax is not)."""
    return 4.0 * c.batch * c.heads * c.head_dim * c.value_dim


def kv_decode_flops(c: Case) -> float:
    """q K^T and (.)V over N + 1 keys: 2·b·h·(n+1)·(d+e) (= 4·b·h·n·d when e = d, n large)."""
    return 2.0 * c.batch * c.heads * (c.seq_len + 1) * (c.head_dim + c.value_dim)


# cache kind -> (FLOP model, byte model, bytes held for the context)
DECODE_MODELS = {"state": (state_decode_flops, state_decode_traffic, state_held_bytes),
                 "kv": (kv_decode_flops, kv_decode_traffic, kv_held_bytes)}


@dataclass(frozen=True)
class Decode:
    """How a mechanism generates one token per sequence against a context (mode ``decode``).

    ``cache``: what it keeps of the context, "state" or "kv" (``DECODE_MODELS``; the steps'
    conventions: ``attnbench.baselines.decode``), or "" where it cannot decode, ``why`` saying
    why. ``load`` returns the step; ``problem`` says why it cannot run here ("" if it can);
    ``impl`` is what runs, for the record (a string, or a function giving one).
    """

    cache: str = ""
    load: Callable[[], Callable] | None = None
    why: str = "it has no decode step"
    problem: Callable[[], str] | None = None
    impl: str | Callable[[], str] = ""


def _decoder(attr: str, *args, module: str = "attnbench.baselines.decode"):
    """``<module>.<attr>(*args)``, imported when called (a step's loader, a probe)."""
    return lambda: getattr(importlib.import_module(module), attr)(*args)


def _sdpa_decode(backend: str) -> Decode:
    label = {"MATH": "math", "FLASH_ATTENTION": "flash", "EFFICIENT_ATTENTION": "efficient",
             "CUDNN_ATTENTION": "cuDNN"}[backend]
    return Decode("kv", _decoder("load_sdpa", backend),
                  impl=f"SDPA {label} backend, one query against the N + 1 cached keys")


_SEQUENCE_PARALLEL_DECODE = Decode(
    why="it splits a sequence over ranks; a decode step of one token runs on one GPU")


# --- the mechanism record ----------------------------------------------------------------


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class Mechanism:
    name: str
    family: str  # "softmax" | "linear"
    load: Callable[[], AttnFn]  # returns the callable; imports happen here, not at import
    summary: str
    layout: str = "bhnd"  # native layout of q, k, v and o
    devices: tuple[str, ...] = ("cuda",)
    dtypes: tuple[str, ...] = ("fp16", "bf16", "fp32")
    head_dims: tuple[int, int] = (16, 256)  # inclusive limits on D (and E)
    head_dim_multiple: int = 1
    causal: bool = True
    decay: bool = False  # takes per-head decay rates (linear attention)
    backward: bool = True
    package: str | None = None  # import name it needs
    pip_hint: str = ""  # how to get that package
    flops: Callable[[Case], float] = quadratic_flops  # forward FLOPs of one call
    memory: Callable[[Case], float] = io_bytes  # bytes a call must hold at least
    traffic: Callable[[Case], float] = io_traffic  # bytes one call of the mode must move
    oracle: str = ""  # the float64 reference that checks it
    # Extra availability test beyond "the package imports": returns a reason, or "" if fine.
    probe: Callable[[], str] | None = None
    # Per-case limits beyond dtype/head dims: returns a reason, or "" if the case is fine.
    case_limits: Callable[[Case], str] | None = None
    # Which implementation really runs for a case (a backend, a dispatched op), where a
    # mechanism can dispatch to several: stored in the record's ``impl`` column.
    impl_of: Callable[[Case], str] | None = None
    warmup_note: str = ""  # shown while its first call runs (e.g. a long autotune)
    value_dim_equal: bool = False  # takes only E = D (a softmax kernel with one head dim)
    # Which implementation will run here and why, for a mechanism that picks one when loaded
    # (flash2: flash-attn or SDPA's flash backend): the reason of a yes from ``available()``.
    choice: Callable[[], str] | None = None
    # Sequence-parallel: the callable takes this rank's piece of each sequence (seq_len /
    # world_size tokens) and every rank of the process group calls it together. Left out of
    # "all" and of families: named outright, under torchrun (attnbench.sharded).
    sequence_parallel: bool = False
    # Bytes one rank sends to collectives in one call of the case's mode (sequence-parallel).
    comm: Callable[[Case], float] | None = None
    # Mode "decode": its one-token step against a state or a KV cache, or why it has none.
    decode: Decode = Decode()

    def callable(self) -> AttnFn:
        return self.load()

    def available(self, device: str | None = None) -> Availability:
        """Can this mechanism run here (on ``device``, if given)? If not, why, in one line."""
        if device is not None and device not in self.devices:
            where = " or ".join(self.devices)
            return Availability(False, f"runs on {where} only, this run is on {device}")
        if device == "cuda" and not torch.cuda.is_available():
            return Availability(False, "no CUDA GPU visible to torch")
        if self.package and importlib.util.find_spec(self.package) is None:
            return Availability(False, f"{self.package} not installed ({self.pip_hint})")
        if self.probe is not None:
            reason = self.probe()
            if reason:
                return Availability(False, reason)
        return Availability(True, self.choice() if self.choice is not None else "")

    def unsupported_reason(self, case: Case) -> str:
        """Why this mechanism cannot take the case, or "" if it can."""
        if case.dtype not in self.dtypes:
            return f"{self.name} does not take {case.dtype} (takes {', '.join(self.dtypes)})"
        if case.mode != "fwd" and not self.backward:
            return f"{self.name} has no backward pass"
        lo, hi = self.head_dims
        for what, d in (("head dim", case.head_dim), ("value dim", case.value_dim)):
            if not lo <= d <= hi or d % self.head_dim_multiple:
                multiple = (f", multiple of {self.head_dim_multiple}"
                            if self.head_dim_multiple > 1 else "")
                return f"{self.name} takes {what}s {lo}..{hi}{multiple}, not {d}"
        if self.value_dim_equal and case.value_dim != case.head_dim:
            return f"{self.name} needs value dim = head dim ({case.head_dim}), not {case.value_dim}"
        if self.case_limits is not None:
            return self.case_limits(case)
        return ""

    def mode_flops(self, case: Case) -> float:
        """FLOPs of one call of the case's mode by this mechanism's model."""
        return MODE_FLOP_FACTOR[case.mode] * self.flops(case)


# --- loaders (imports deferred until a mechanism is used) ---------------------------------


def _from(module: str, attr: str, call: bool = False) -> Callable[[], AttnFn]:
    """Loader of ``module.attr`` (``call=True``: ``attr`` is a factory that returns the fn)."""
    def load() -> AttnFn:
        obj = getattr(importlib.import_module(module), attr)
        return obj() if call else obj
    return load


def _peer_limits(c: Case) -> str:
    return importlib.import_module("attnbench.baselines.peers").lightning_attn_limits(
        c.seq_len, c.head_dim, c.dtype, c.decay)


def _sdpa(backend: str) -> Callable[[], AttnFn]:
    return lambda: importlib.import_module("attnbench.baselines.softmax").sdpa_backend_fn(backend)


def _softmax(attr: str, *args):
    """``attnbench.baselines.softmax.<attr>(*args, ...)``, imported when called (a loader, a
    probe, an impl_of), never at import."""
    return lambda *more: getattr(importlib.import_module("attnbench.baselines.softmax"),
                                 attr)(*args, *more)


def _impl(attr: str) -> Callable[[Case], str]:
    """``attnbench.baselines.softmax.<attr>(b, h, n, d, dtype)`` for a Case."""
    return lambda c: _softmax(attr)(c.batch, c.heads, c.seq_len, c.head_dim, c.dtype)


def _cutlass_limits(c: Case) -> str:
    """CUTLASS memory-efficient kernels (SDPA's efficient backend, xformers' cutlass ops) on
    sm80+: head dims a multiple of 16 bytes' worth (8 for fp16/bf16, 4 for fp32)."""
    multiple = 4 if c.dtype == "fp32" else 8
    for d in (c.head_dim, c.value_dim):
        if d % multiple:
            return f"head dim must be a multiple of {multiple} for {c.dtype}, not {d}"
    return ""


def _sp(attr: str, *args):
    """``attnbench.baselines.sequence_parallel.<attr>(*args, ...)``, imported when called."""
    return lambda *more: getattr(importlib.import_module("attnbench.baselines.sequence_parallel"),
                                 attr)(*args, *more)


def _state_comm(c: Case) -> float:
    """lightning2-sp: one all-gather of (B, H, D, E) fp32 states forward, one backward; a ring
    all-gather sends W-1 of them per rank, whatever the length."""
    calls = _per_mode(c, 1, 1)
    return float(calls * _sp("state_bytes_sent")(c.batch, c.heads, c.head_dim, c.value_dim,
                                                 c.world_size))


def _kv_comm(c: Case) -> float:
    """sdpa-ring: the keys and values of a piece go once around the ring forward; the backward
    passes them again with their gradients (a model: about twice the forward)."""
    once = _sp("kv_bytes_sent")(c.batch, c.heads, c.seq_len_per_rank, c.head_dim, c.value_dim,
                                ELEMENT_BYTES[c.dtype], c.world_size)
    return float(once * _per_mode(c, 1, 2))


def _sp_io_bytes(c: Case) -> float:
    """Per rank: io_bytes of its piece."""
    return io_bytes(c.with_(seq_len=c.seq_len_per_rank, world_size=1))


def _lightning2_impl(c: Case) -> str:
    """lightning2: the whole sequence per program, or the split this case gets here."""
    kernel = importlib.import_module("attnbench.kernels.lightning2")
    device = (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
              else torch.device("cpu"))
    seg = kernel.segment_length(c.batch, c.heads, c.seq_len, c.head_dim, c.value_dim,
                                DTYPES[c.dtype], kernel.sm_count(device))
    if seg >= c.seq_len:
        return "lightning_attn2: whole-sequence scans"
    return f"lightning_attn2: {-(-c.seq_len // seg)} segments of {seg} tokens per sequence"


# --- the registry --------------------------------------------------------------------------

MECHANISMS: tuple[Mechanism, ...] = (
    # Linear attention ------------------------------------------------------------------
    Mechanism(
        name="lightning2",
        family="linear",
        load=_from("attnbench.kernels", "lightning_attn2"),
        summary="our Lightning Attention-2 Triton kernels: intra-block masked, state on chip",
        head_dims=(16, 256),
        decay=True,
        flops=linear_state_flops,
        oracle="linear-recurrent",
        traffic=io_traffic,
        impl_of=_lightning2_impl,
        decode=Decode("state", _decoder("load_lightning2"),
                      impl="lightning_attn2_decode: the fp32 state read, decayed, k^T v added "
                           "and written back, o = q S, one Triton pass"),
    ),
    Mechanism(
        name="lightning1",
        family="linear",
        load=_from("attnbench.kernels", "lightning_attn1"),
        summary="our Lightning Attention-1 Triton kernels: FlashAttention-style, no softmax",
        head_dims=(16, 256),
        decay=True,
        flops=quadratic_flops,
        oracle="linear-recurrent",
        traffic=io_traffic,
        decode=Decode(why="Lightning-1 is the blockwise quadratic form and keeps no state: a "
                          "token would re-read every past key; the same attention decodes "
                          "as lightning2 (its state)"),
    ),
    Mechanism(
        name="peer-lightning-attn",
        family="linear",
        load=_from("attnbench.baselines.peers", "load_lightning_attn", call=True),
        summary="official lightning-attn 0.0.5 lightning_attn_func (OpenNLPLab)",
        head_dims=(1, 256),
        decay=True,
        package="lightning_attn",
        pip_hint="pip install 'attnbench[peers]'",
        flops=linear_state_flops,
        oracle="linear-recurrent",
        traffic=io_traffic,
        case_limits=_peer_limits,
        decode=Decode(why="lightning-attn 0.0.5 has no decode or recurrent function "
                          "(lightning_attn_func takes whole sequences)"),
    ),
    Mechanism(
        name="peer-fla-chunk",
        family="linear",
        load=_from("attnbench.baselines.peers", "load_fla_chunk", call=True),
        summary="fla-core chunk_simple_gla (g_gamma = -s, scale 1), layout (B, N, H, D)",
        layout="bnhd",
        head_dims=(16, 256),
        decay=True,
        package="fla",
        pip_hint="pip install 'attnbench[peers]'",
        flops=linear_state_flops,
        oracle="linear-recurrent",
        traffic=io_traffic,
        warmup_note="fla autotunes on its first call (30-120 s on an H100)",
        decode=Decode("state", _decoder("load_fla_decode", module="attnbench.baselines.peers"),
                      impl="fla fused_recurrent_simple_gla on one token (its recurrent "
                           "kernel), the next state returned as a new tensor"),
    ),
    Mechanism(
        name="linear-recurrent",
        family="linear",
        load=_from("attnbench.baselines.linear", "linear_recurrent"),
        summary="token-by-token state recurrence in PyTorch (oracle; slow: one step per token)",
        devices=("cpu", "cuda"),
        head_dims=(1, 1024),
        decay=True,
        flops=linear_state_flops,
        oracle="linear-masked",
        traffic=prefix_state_traffic,
        decode=Decode("state", _decoder("load_linear_recurrent"),
                      impl="one step of the recurrence in PyTorch (the decode oracle)"),
    ),
    Mechanism(
        name="linear-masked",
        family="linear",
        load=_from("attnbench.baselines.linear", "linear_masked"),
        summary='(Q K^T * M) V with the full n x n decay mask in PyTorch (the paper\'s "Vanilla")',
        devices=("cpu", "cuda"),
        head_dims=(1, 1024),
        decay=True,
        flops=quadratic_flops,
        memory=score_matrix_bytes,
        oracle="linear-recurrent",
        traffic=score_matrix_traffic,
        decode=Decode(why="the masked n x n form keeps no state: a token would re-read its whole "
                          "context; the same attention decodes as linear-recurrent"),
    ),
    Mechanism(
        name="linear-cumsum",
        family="linear",
        load=_from("attnbench.baselines.linear", "linear_cumsum"),
        summary="naive cumsum linear attention, no decay: every prefix state materialised",
        devices=("cpu", "cuda"),
        head_dims=(1, 1024),
        decay=False,
        flops=linear_state_flops,
        memory=prefix_state_bytes,
        oracle="linear-recurrent",
        traffic=prefix_state_traffic,
        decode=Decode(why="it materialises every prefix state of a whole sequence at once; a "
                          "token's step is the recurrence (linear-recurrent)"),
    ),
    Mechanism(
        name="lightning2-sp",
        family="linear",
        load=_from("attnbench.baselines.sequence_parallel", "lightning2_sp"),
        summary="lightning2 with the sequence split over the ranks of a torch.distributed "
                "group, LASP-2 style: one all-gather of (B, H, D, E) states forward, one "
                "backward (run under torchrun; CPU through the Triton interpreter)",
        devices=("cpu", "cuda"),
        head_dims=(16, 256),
        decay=True,
        flops=linear_state_flops,
        memory=_sp_io_bytes,
        oracle="linear-recurrent",
        traffic=io_traffic,
        probe=_sp("group_problem"),
        impl_of=lambda c: (f"lightning_attn2 on {c.seq_len_per_rank} tokens per rank, one "
                           f"state all-gather each way over {c.world_size} ranks"
                           if c.world_size > 1 else "lightning_attn2 (one rank: no exchange)"),
        sequence_parallel=True,
        comm=_state_comm,
        decode=_SEQUENCE_PARALLEL_DECODE,
    ),
    # Softmax attention -----------------------------------------------------------------
    Mechanism(
        name="softmax-naive",
        family="softmax",
        load=_from("attnbench.baselines.softmax", "softmax_naive"),
        summary="causal softmax with the n x n score matrix materialised in PyTorch (oracle)",
        devices=("cpu", "cuda"),
        head_dims=(1, 1024),
        memory=score_matrix_bytes,
        oracle="sdpa-math",
        traffic=score_matrix_traffic,
        decode=Decode("kv", _decoder("load_softmax_naive"),
                      impl="PyTorch matmuls and softmax over the N + 1 cached keys (the oracle)"),
    ),
    Mechanism(
        name="sdpa-math",
        family="softmax",
        load=_sdpa("MATH"),
        summary="PyTorch SDPA pinned to its math backend (oracle)",
        devices=("cpu", "cuda"),
        head_dims=(1, 1024),
        memory=score_matrix_bytes,
        oracle="softmax-naive",
        traffic=score_matrix_traffic,
        decode=_sdpa_decode("MATH"),
    ),
    Mechanism(
        name="flash2",
        family="softmax",
        load=_softmax("flash2_fn"),
        summary="FlashAttention-2: flash-attn's flash_attn_func if it imports, else PyTorch "
                "SDPA's flash backend (the same kernel) on (B, N, H, D) views",
        layout="bnhd",
        dtypes=("fp16", "bf16"),
        head_dims=(8, 256),
        head_dim_multiple=8,
        pip_hint="pip install 'attnbench[flash]'",
        value_dim_equal=True,
        oracle="softmax-naive",
        traffic=softmax_io_traffic,
        probe=_softmax("flash2_problem"),
        choice=_softmax("flash2_choice"),
        impl_of=_impl("flash2_impl"),
        decode=Decode("kv", _decoder("load_flash2_kvcache"),
                      problem=_decoder("flash2_kvcache_problem"),
                      impl=_decoder("flash2_kvcache_impl")),
    ),
    Mechanism(
        name="sdpa-flash",
        family="softmax",
        load=_sdpa("FLASH_ATTENTION"),
        summary="PyTorch SDPA pinned to its flash backend (FlashAttention-2 inside torch)",
        dtypes=("fp16", "bf16"),
        head_dims=(8, 256),
        head_dim_multiple=8,
        value_dim_equal=True,
        oracle="softmax-naive",
        traffic=softmax_io_traffic,
        probe=_softmax("sdpa_problem", "FLASH_ATTENTION"),
        decode=_sdpa_decode("FLASH_ATTENTION"),
    ),
    Mechanism(
        name="sdpa-cudnn",
        family="softmax",
        load=_sdpa("CUDNN_ATTENTION"),
        summary="PyTorch SDPA pinned to its cuDNN backend (head dims over 128 only on sm90/"
                "sm100 with a recent cuDNN: refused at run time otherwise)",
        dtypes=("fp16", "bf16"),
        head_dims=(8, 256),
        head_dim_multiple=8,
        value_dim_equal=True,
        oracle="softmax-naive",
        traffic=softmax_io_traffic,
        probe=_softmax("sdpa_problem", "CUDNN_ATTENTION"),
        decode=_sdpa_decode("CUDNN_ATTENTION"),
    ),
    Mechanism(
        name="sdpa-efficient",
        family="softmax",
        load=_sdpa("EFFICIENT_ATTENTION"),
        summary="PyTorch SDPA pinned to its memory-efficient (CUTLASS) backend",
        head_dims=(4, 1024),
        oracle="softmax-naive",
        traffic=softmax_io_traffic,
        case_limits=_cutlass_limits,
        decode=_sdpa_decode("EFFICIENT_ATTENTION"),
    ),
    Mechanism(
        name="xformers",
        family="softmax",
        load=_softmax("xformers_fn"),
        summary="xformers memory_efficient_attention with LowerTriangularMask, layout "
                "(B, N, H, D); the operator xformers dispatched to is recorded",
        layout="bnhd",
        head_dims=(4, 1024),
        package="xformers",
        pip_hint="pip install 'attnbench[xformers]', a build for this torch",
        value_dim_equal=True,
        oracle="softmax-naive",
        traffic=softmax_io_traffic,
        probe=_softmax("xformers_problem"),
        case_limits=_cutlass_limits,
        impl_of=_impl("xformers_impl"),
        decode=Decode(why="attnbench wires no decode step for xformers yet (sdpa-efficient runs "
                          "its CUTLASS kernel family over a KV cache)"),
    ),
    Mechanism(
        name="sdpa-ring",
        family="softmax",
        load=_from("attnbench.baselines.sequence_parallel", "sdpa_ring"),
        summary="causal softmax with the sequence split over the ranks: PyTorch's context "
                "parallelism ringing SDPA's flash backend (keys and values rotated, alltoall); "
                "CUDA only (it has no ring for the CPU's SDPA kernels)",
        dtypes=("fp16", "bf16"),
        head_dims=(8, 256),
        head_dim_multiple=8,
        value_dim_equal=True,
        memory=_sp_io_bytes,
        oracle="softmax-naive",
        traffic=softmax_io_traffic,
        probe=_sp("sdpa_ring_problem", "cuda"),
        impl_of=lambda c: f"context_parallel ring (alltoall) of SDPA flash over {c.world_size} "
                          "ranks",
        sequence_parallel=True,
        comm=_kv_comm,
        decode=_SEQUENCE_PARALLEL_DECODE,
    ),
)

# The plain-PyTorch mechanism whose error in the case's dtype sets the tolerance of each
# family's check (FlashAttention's rule: err(mechanism) <= 2 x err(plain PyTorch)).
DTYPE_BASELINE = {"linear": "linear-masked", "softmax": "softmax-naive"}

_BY_NAME = {m.name: m for m in MECHANISMS}


def names() -> list[str]:
    return [m.name for m in MECHANISMS]


def get(name: str) -> Mechanism:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UsageError(f"unknown mechanism {name!r}; known: {', '.join(names())}") from None


def select(selection: str | None, device: str | None) -> list[Mechanism]:
    """Resolve ``"lightning2,softmax"`` (names or families, comma separated) to mechanisms.

    ``None``, ``""`` or ``"all"`` means every mechanism that runs on ``device`` (every one,
    for ``device=None``). A family means its members that run on ``device``. On a device,
    sequence-parallel mechanisms are taken only by name (they need a sharded run). A
    mechanism named outright is kept even if it cannot run here: the sweep records why.
    """
    def runs_here(m: Mechanism) -> bool:
        return device is None or device in m.devices

    def swept(m: Mechanism) -> bool:  # a sweep takes sequence-parallel ones only by name
        return runs_here(m) and (device is None or not m.sequence_parallel)

    if selection is None or selection.strip() in ("", "all"):
        return [m for m in MECHANISMS if swept(m)]
    chosen: list[Mechanism] = []
    for token in (t.strip() for t in selection.split(",")):
        if not token:
            continue
        if token in FAMILIES:
            members = [m for m in MECHANISMS if m.family == token and swept(m)]
        elif token in _BY_NAME:
            members = [_BY_NAME[token]]
        else:
            raise UsageError(
                f"unknown mechanism or family {token!r}; families: {', '.join(FAMILIES)}; "
                f"mechanisms: {', '.join(names())}"
            )
        chosen.extend(m for m in members if m not in chosen)
    if not chosen:
        raise UsageError(f"no mechanism selected by {selection!r} on {device}")
    return chosen


def listing(device: str | None) -> list[dict]:
    """Every mechanism as a dict (``attnbench list --json``): what it is, what it takes, and
    whether it runs on ``device`` here, with the reason."""
    rows = []
    for m in MECHANISMS:
        avail = m.available(device)
        rows.append(dict(name=m.name, family=m.family, available=avail.ok, reason=avail.reason,
                         devices=list(m.devices), dtypes=list(m.dtypes),
                         head_dims=list(m.head_dims), decay=m.decay, backward=m.backward,
                         layout=m.layout, package=m.package, oracle=m.oracle, summary=m.summary))
    return rows
