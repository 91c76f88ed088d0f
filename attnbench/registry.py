"""Every attention mechanism attnbench knows, in one list.

A mechanism is data: what it is, what it can take, what it needs, how much work it does and
which float64 oracle checks it. ``available()`` says yes, or no with a reason a person can
act on. Nothing here imports a mechanism's package until the mechanism is loaded or asked
whether it is available, and nothing is read from the environment at import.

Mechanism callables share one signature, ``fn(q, k, v, decay) -> o``, with q, k, v and o in
the mechanism's native layout (``bhnd`` = (B, H, N, D) or ``bnhd`` = (B, N, H, D)) and decay
either None or the per-head rates ``s_h`` of shape (H,).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnbench.errors import UsageError

FAMILIES = ("softmax", "linear")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
MODES = ("fwd", "bwd", "fwdbwd")

AttnFn = Callable[..., torch.Tensor]


# --- FLOP models -------------------------------------------------------------------------
# Forward FLOPs of one call, causal. The backward pass is counted as 2.5x the forward
# (FlashAttention's convention: 5 matmuls against 2, so TFLOP/s compare with its numbers).

BWD_FLOP_FACTOR = 2.5


def quadratic_flops(b: int, h: int, n: int, d: int, e: int) -> float:
    """Q K^T and (.)V over the causal half: 2·b·h·n²·(d+e)/2 (= 4·b·h·n²·d/2 when e = d).

    FlashAttention's convention for causal softmax attention: a multiply-add is 2 FLOPs, the
    causal mask halves the n² score matrix (n²/2, not n(n+1)/2), softmax and scaling are not
    counted, and the backward pass is BWD_FLOP_FACTOR (2.5x) the forward.
    """
    return b * h * n * n * (d + e)


def linear_state_flops(b: int, h: int, n: int, d: int, e: int) -> float:
    """The state form's useful work: per token k^T v into the state and q·S out, 4·d·e."""
    return 4.0 * b * h * n * d * e


def mode_flops(fwd_flops: float, mode: str) -> float:
    return {"fwd": 1.0, "bwd": BWD_FLOP_FACTOR, "fwdbwd": 1.0 + BWD_FLOP_FACTOR}[mode] * fwd_flops


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
    flops: Callable[[int, int, int, int, int], float] = quadratic_flops
    oracle: str = ""  # the float64 reference that checks it
    # Extra availability test beyond "the package imports": returns a reason, or "" if fine.
    probe: Callable[[], str] | None = None
    # Per-case limits beyond dtype/head dim: returns a reason, or "" if the case is fine.
    case_limits: Callable[[int, int, str, bool], str] | None = None  # (n, d, dtype, decay)
    # Which implementation really runs for a case (a backend, a dispatched op), where a
    # mechanism can dispatch to several: stored in the record's ``impl`` column.
    impl_of: Callable[[int, int, int, int, str], str] | None = None  # (b, h, n, d, dtype)
    warmup_note: str = ""  # shown while its first call runs (e.g. a long autotune)
    # Which implementation will run here and why, for a mechanism that picks one when loaded
    # (flash2: flash-attn or SDPA's flash backend): the reason of a yes from ``available()``.
    choice: Callable[[], str] | None = None

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

    def unsupported_reason(self, n: int, d: int, dtype: str, decay: bool) -> str:
        """Why this mechanism cannot take the case, or "" if it can."""
        if dtype not in self.dtypes:
            return f"{self.name} does not take {dtype} (takes {', '.join(self.dtypes)})"
        lo, hi = self.head_dims
        if not lo <= d <= hi or d % self.head_dim_multiple:
            multiple = (f", multiple of {self.head_dim_multiple}"
                        if self.head_dim_multiple > 1 else "")
            return f"{self.name} takes head dims {lo}..{hi}{multiple}, not {d}"
        if self.case_limits is not None:
            return self.case_limits(n, d, dtype, decay)
        return ""


# --- loaders (imports deferred until a mechanism is used) ---------------------------------


def _from(module: str, attr: str, call: bool = False) -> Callable[[], AttnFn]:
    """Loader of ``module.attr`` (``call=True``: ``attr`` is a factory that returns the fn)."""
    def load() -> AttnFn:
        obj = getattr(importlib.import_module(module), attr)
        return obj() if call else obj
    return load


def _peer_limits(n: int, d: int, dtype: str, decay: bool) -> str:
    return importlib.import_module("attnbench.baselines.peers").lightning_attn_limits(
        n, d, dtype, decay)


def _sdpa(backend: str) -> Callable[[], AttnFn]:
    return lambda: importlib.import_module("attnbench.baselines.softmax").sdpa_backend_fn(backend)


def _softmax(attr: str, *args):
    """``attnbench.baselines.softmax.<attr>(*args, ...)``, imported when called (a loader, a
    probe, an impl_of), never at import."""
    return lambda *more: getattr(importlib.import_module("attnbench.baselines.softmax"),
                                 attr)(*args, *more)


def _cutlass_limits(n: int, d: int, dtype: str, decay: bool) -> str:
    """CUTLASS memory-efficient kernels (SDPA's efficient backend, xformers' cutlass ops) on
    sm80+: head dim a multiple of 16 bytes' worth (8 for fp16/bf16, 4 for fp32)."""
    multiple = 4 if dtype == "fp32" else 8
    return f"head dim must be a multiple of {multiple} for {dtype}, not {d}" if d % multiple else ""


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
        case_limits=_peer_limits,
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
        warmup_note="fla autotunes on its first call (30-120 s on an H100)",
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
        oracle="linear-recurrent",
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
        oracle="linear-recurrent",
    ),
    # Softmax attention -----------------------------------------------------------------
    Mechanism(
        name="softmax-naive",
        family="softmax",
        load=_from("attnbench.baselines.softmax", "softmax_naive"),
        summary="causal softmax with the n x n score matrix materialised in PyTorch (oracle)",
        devices=("cpu", "cuda"),
        head_dims=(1, 1024),
        oracle="sdpa-math",
    ),
    Mechanism(
        name="sdpa-math",
        family="softmax",
        load=_sdpa("MATH"),
        summary="PyTorch SDPA pinned to its math backend (oracle)",
        devices=("cpu", "cuda"),
        head_dims=(1, 1024),
        oracle="softmax-naive",
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
        oracle="softmax-naive",
        probe=_softmax("flash2_problem"),
        choice=_softmax("flash2_choice"),
        impl_of=_softmax("flash2_impl"),
    ),
    Mechanism(
        name="sdpa-flash",
        family="softmax",
        load=_sdpa("FLASH_ATTENTION"),
        summary="PyTorch SDPA pinned to its flash backend (FlashAttention-2 inside torch)",
        dtypes=("fp16", "bf16"),
        head_dims=(8, 256),
        head_dim_multiple=8,
        oracle="softmax-naive",
        probe=_softmax("sdpa_problem", "FLASH_ATTENTION"),
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
        oracle="softmax-naive",
        probe=_softmax("sdpa_problem", "CUDNN_ATTENTION"),
    ),
    Mechanism(
        name="sdpa-efficient",
        family="softmax",
        load=_sdpa("EFFICIENT_ATTENTION"),
        summary="PyTorch SDPA pinned to its memory-efficient (CUTLASS) backend",
        head_dims=(4, 1024),
        oracle="softmax-naive",
        case_limits=_cutlass_limits,
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
        oracle="softmax-naive",
        probe=_softmax("xformers_problem"),
        case_limits=_cutlass_limits,
        impl_of=_softmax("xformers_impl"),
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


def select(selection: str | None, device: str) -> list[Mechanism]:
    """Resolve ``"lightning2,softmax"`` (names or families, comma separated) to mechanisms.

    ``None``, ``""`` or ``"all"`` means every mechanism that runs on ``device``. A family
    means its members that run on ``device``. A mechanism named outright is kept even if it
    cannot run here: the sweep records why.
    """
    if selection is None or selection.strip() in ("", "all"):
        return [m for m in MECHANISMS if device in m.devices]
    chosen: list[Mechanism] = []
    for token in (t.strip() for t in selection.split(",")):
        if not token:
            continue
        if token in FAMILIES:
            members = [m for m in MECHANISMS if m.family == token and device in m.devices]
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
