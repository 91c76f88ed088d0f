"""What a case does with its mechanism: one ``Mode`` object per mode, all of them here.

A mode holds the call it makes from a case (``prepare``), its FLOP and byte models, its
memory floor, the case that checks it against the float64 oracle, its limits, and its words
in tables and figures. The sweep, the reports and the figures ask the case's mode
(``of(case)`` or ``get(name)``) rather than compare mode names:

- ``fwd``: the forward pass.
- ``bwd``: the backward pass alone, from a graph built once and kept (``retain_graph``).
- ``fwdbwd``: both, as one call.
- ``train``: one training step of the case's model (``attnbench.models``) with the mechanism
  as its attention: forward, cross-entropy on seeded random tokens, backward, AdamW step, on
  ``batch`` x ``seq_len`` tokens. The first call allocates AdamW's state: the sweep's first
  calls (timed apart) are its warm-up.
- ``decode``: inference, one new token for every sequence of the batch against a context of
  ``seq_len`` tokens already processed, through the mechanism's KV cache or state (its
  ``Decode``, ``attnbench.registry``); tokens/s is batch / step time.

A new mode is one more object here plus the mechanisms that take it.

Inputs are seeded random tensors made before timing in the mechanism's native layout (no
copy or transpose in the timed region). Backward calls drop old gradients first: do_bench
resets them only around its timed repetitions, and accumulating during its estimate and
warm-up would add a sum kernel and a second set of gradients (24 GiB at 256k in the paper
shape).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from attnbench import check as checking
from attnbench import registry
from attnbench.case import Case
from attnbench.errors import UsageError
from attnbench.measure import MIB
from attnbench.registry import Mechanism
from attnbench.testing import planted_slowdown


def _count(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _mib(x: float) -> str:
    return f"{x:,.0f}"


@dataclass
class PreparedCall:
    case: Case
    mechanism: Mechanism
    call: Callable[[], object]  # one call of the case's mode; asynchronous on a GPU
    inputs: list[torch.Tensor]  # the leaves whose gradients a call writes
    min_reps: int = 1  # timed repetitions the call needs at least (the timers' floor)
    cache_bytes: float = math.nan  # what the call keeps of a context (decode: cache or state)

    def reset_grads(self) -> None:
        for x in self.inputs:
            x.grad = None

    @property
    def flops(self) -> float:
        """FLOPs of one call (the mode's FLOP model)."""
        return of(self.case).flops(self.mechanism, self.case)

    @property
    def bytes(self) -> float:
        """Bytes one call must move at least (the mode's byte model; NaN where it has none)."""
        return of(self.case).bytes(self.mechanism, self.case)

    @property
    def tokens(self) -> int:
        """Tokens one call processes (the mode's: the tokens/s numerator)."""
        return of(self.case).tokens(self.case)

    def rates(self, seconds: float) -> dict:
        """The record's rates for one call of ``seconds``: tokens/s, TFLOP/s, GB/s, and the
        MiB the call keeps of a context (NaN where it keeps none)."""
        return dict(tokens_per_s=self.tokens / seconds, tflops=self.flops / seconds / 1e12,
                    gbps=self.bytes / seconds / 1e9, cache_mib=self.cache_bytes / MIB)


@dataclass(frozen=True)
class Mode:
    """A mode of an attention operator: ``make(fn, q, k, v, decay, reset_grads)`` is its call."""

    name: str
    words: str  # what it is called in sentences and figure titles
    make: Callable  # (fn, q, k, v, decay, reset_grads) -> the call
    grads: bool = True  # the inputs need gradients (a backward pass runs)
    min_reps: int = 1  # timed repetitions at least
    follows_length: tuple[str, ...] = ()  # case fields that follow the length in a sweep
    # report metric -> (column, title, format, mark host-bound) where it reads otherwise
    metrics: dict = field(default_factory=dict)
    figures: tuple[str, ...] = ()  # figures a run of this mode draws besides the sweep's
    checked_against: str = "float64 oracle"  # what its check compares with, in words

    def unsupported_reason(self, mech: Mechanism, case: Case) -> str:
        """Why ``mech`` cannot take ``case`` ("" if it can)."""
        return mech.unsupported_reason(case)

    def tokens(self, case: Case) -> int:
        """Tokens one call processes: batch x seq_len."""
        return case.tokens

    def impl(self, mech: Mechanism, case: Case) -> str:
        """Which implementation runs ``case`` ("" where the mechanism has one only)."""
        return mech.impl_of(case) if mech.impl_of is not None else ""

    def flops(self, mech: Mechanism, case: Case) -> float:
        """FLOPs of one call: the mechanism's FLOP model for this mode."""
        return mech.mode_flops(case)

    def bytes(self, mech: Mechanism, case: Case) -> float:
        """Bytes one call must move at least: the mechanism's byte model (its traffic)."""
        return mech.traffic(case)

    def memory_floor(self, mech: Mechanism, case: Case) -> float:
        """Bytes a call must hold at least (a case above the free memory is not tried)."""
        return mech.memory(case)

    def check_case(self, case: Case) -> Case:
        """The short case that checks ``case``'s mechanism against its float64 oracle (the
        sweep checks a mechanism once per check case)."""
        return checking.check_case(case)

    def check(self, mech: Mechanism, case: Case, device: str) -> checking.CheckResult:
        """``mech`` against its float64 oracle on ``case``, a case of ``check_case``."""
        return checking.check(mech, case, device)

    def prepare(self, mech: Mechanism, case: Case, device: str,
                fn: Callable | None = None) -> PreparedCall:
        """Inputs and the call of ``case`` (``fn``: the mechanism's loaded callable)."""
        fn = fn if fn is not None else mech.callable()
        q, k, v = checking.random_inputs(case, mech.layout, device, self.grads, seed=case.seq_len)
        decay = checking.decay_rates(mech, case.decay, case.heads, device)
        inputs = [q, k, v]

        def reset_grads():
            for x in inputs:
                x.grad = None

        call = self.make(fn, q, k, v, decay, reset_grads)
        return PreparedCall(case, mech, planted_slowdown(mech.name, call, device), inputs,
                            self.min_reps)


def _forward(fn, q, k, v, decay, reset_grads):
    def call():
        return fn(q, k, v, decay)
    return call


def _backward(fn, q, k, v, decay, reset_grads):
    out = fn(q, k, v, decay)  # the graph is kept; only the backward pass is timed
    d_out = torch.randn_like(out)

    def call():
        reset_grads()
        out.backward(d_out, retain_graph=True)
    return call


def _forward_backward(fn, q, k, v, decay, reset_grads):
    with torch.no_grad():
        d_out = torch.randn_like(fn(q, k, v, decay))

    def call():
        reset_grads()
        fn(q, k, v, decay).backward(d_out)
    return call


TRAIN_MIN_STEPS = 5  # timed steps at least, however long one takes (warm-up steps apart)


@dataclass(frozen=True)
class TrainMode(Mode):
    """A model's training step (``attnbench.models``) with the mechanism as its attention."""

    def _config(self, case: Case):
        from attnbench.models import config_for

        return config_for(case.model, case.size)

    def unsupported_reason(self, mech: Mechanism, case: Case) -> str:
        """The mechanism's limits at every attention layer of the model."""
        from attnbench.models import unsupported_reason

        return unsupported_reason(self._config(case), mech.name, case.seq_len, case.dtype)

    def flops(self, mech: Mechanism, case: Case) -> float:
        """The model's FLOPs (``models.train_flops_per_token`` x tokens)."""
        from attnbench.models import train_flops_per_token

        return train_flops_per_token(self._config(case), case.seq_len) * case.tokens

    def bytes(self, mech: Mechanism, case: Case) -> float:
        return float("nan")  # no byte model of a whole model

    def memory_floor(self, mech: Mechanism, case: Case) -> float:
        """The model's parameters, gradients and AdamW state; activations come on top."""
        from attnbench.models import build_model, count_params, train_memory_floor

        params = count_params(build_model(case.model, case.size, mech.name, "meta", case.dtype))
        return float(train_memory_floor(params, case.dtype))

    def check_case(self, case: Case) -> Case:
        """The model at batch 1, a short length, without checkpointing (the same math)."""
        return checking.check_case(case).with_(batch=1, checkpointing=False)

    def check(self, mech: Mechanism, case: Case, device: str) -> checking.CheckResult:
        """Two checks of ``case`` (a case of ``check_case``), the worse one kept (its error over
        its tolerance): the attention inside the model (its heads, head dims, precision and
        decay) against its float64 oracle, and the whole model's loss and gradients against
        the model in fp32 with the family's PyTorch reference (``check.check_model``), so that
        mechanisms timed in one model compute the same thing."""
        results = (checking.check(mech, case.with_(model="", size=""), device),
                   checking.check_model(mech, case, device))
        failed = [r for r in results if not r.passed]
        return failed[0] if failed else max(results, key=lambda r: r.max_rel_err / r.tol)

    def prepare(self, mech: Mechanism, case: Case, device: str,
                fn: Callable | None = None) -> PreparedCall:
        from attnbench.models import build_model, make_train_step

        model = build_model(case.model, case.size, mech.name, device, dtype_policy=case.dtype)
        step = make_train_step(model, case.batch, case.seq_len, device, case.checkpointing)
        # the step clears its own gradients (zero_grad(set_to_none)): no inputs to reset
        return PreparedCall(case, mech, planted_slowdown(mech.name, step, device), [],
                            self.min_reps)


# The decode check: a short odd context, then a few steps, against the float64 step of the
# cache kind's oracle; the same step in the case's dtype sets the tolerance (the 2x rule).
# The check keeps the case's batch (the kernels pick tiles by it), so its context is short.
DECODE_CHECK_CONTEXT = 29
DECODE_CHECK_STEPS = 3
DECODE_ORACLE = {"state": "linear-recurrent", "kv": "softmax-naive"}


def context_cache(mech: Mechanism, case: Case, device: str, decay, seed: int) -> list:
    """What ``mech`` keeps of a context of ``case.seq_len`` tokens, made directly on
    ``device`` from seeded random numbers (never zeros), in the mechanism's layout.

    A state: float32 (B, H, D, E), each head at the scale a sum of N random k^T v terms has
    (standard deviation sqrt(sum_j lambda^(2j)), sqrt(N) without decay); its size does not
    depend on N. A KV cache: keys and values of N + 1 tokens in the case's dtype, the last
    slot the one each step writes.
    """
    b, h, n, d, e = case.batch, case.heads, case.seq_len, case.head_dim, case.value_dim
    gen = torch.Generator(device=device).manual_seed(seed)
    if mech.decode.cache == "state":
        if decay is None:
            scale = torch.full((h,), math.sqrt(n), dtype=torch.float64, device=device)
        else:
            lam2 = torch.exp(-2.0 * decay.double())
            scale = torch.where(lam2 < 1, torch.sqrt((1 - lam2**n) / (1 - lam2).clamp_min(1e-300)),
                                math.sqrt(n))
        state = torch.randn((b, h, d, e), generator=gen, device=device, dtype=torch.float32)
        return [state.mul_(scale.float().view(1, h, 1, 1))]
    dtype = registry.DTYPES[case.dtype]
    shape = (lambda x: (b, h, n + 1, x)) if mech.layout == "bhnd" else (lambda x: (b, n + 1, h, x))
    return [torch.randn(shape(x), generator=gen, device=device, dtype=dtype) for x in (d, e)]


def _decode_steps(mech: Mechanism, step, qkv, decay, n: int, dtype, device: str,
                  state64=None) -> list[torch.Tensor]:
    """[outputs (B, H, T, E), and for a state the state after them] of ``step`` over the
    tokens n.. of ``qkv`` (float64, (B, H, n + T, .)) cast to ``dtype`` on ``device``.

    A state starts from ``state64`` (the context's, float64) in the step's state dtype; a KV
    cache of t + 1 slots is made for token t from the tokens before it, the last slot NaN:
    a step that does not write the new token there gives NaN."""
    q, k, v = (x.to(device=device, dtype=dtype) for x in qkv)
    cache = None
    if mech.decode.cache == "state":
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        cache = [state64.to(device=device, dtype=state_dtype).clone()]
    axis = 2 if mech.layout == "bhnd" else 1
    outs = []
    for t in range(n, q.shape[2]):
        token = [checking.to_layout(x[:, :, t : t + 1], mech.layout) for x in (q, k, v)]
        if mech.decode.cache == "kv":
            cache = [checking.to_layout(x[:, :, : t + 1], mech.layout).clone() for x in (k, v)]
            for x in cache:
                x.narrow(axis, t, 1).fill_(float("nan"))
        outs.append(checking.from_layout(step(*token, cache, decay), mech.layout))
    return [torch.cat(outs, dim=2) if outs else v[:, :, :0]] + (
        [cache[0]] if mech.decode.cache == "state" else [])


@dataclass(frozen=True)
class DecodeMode(Mode):
    """One new token for every sequence of the batch against a context of ``seq_len`` tokens
    already processed (the mechanism's ``Decode``: a state, or a KV cache of N + 1 slots).

    The timed call is one step: q, k, v of one token in; the state read, updated and written
    back, or the new key and value written into the cache's fixed slot N and attention over
    N + 1 keys; o of one token out. The cache is made before timing and never grows: calls
    repeated by the timer overwrite the same slot. Memory: ``cache_mib`` in the record is what
    is kept for the context, ``extra_mem_mib`` what a step allocates beyond it.
    """

    def _models(self, mech: Mechanism):
        return registry.DECODE_MODELS.get(mech.decode.cache)

    def unsupported_reason(self, mech: Mechanism, case: Case) -> str:
        """Why ``mech`` has no step here, or the limits of its forward call (dtypes, head
        dims) that its step shares."""
        dec = mech.decode
        if not dec.cache:
            return f"{mech.name} cannot decode: {dec.why}"
        problem = dec.problem() if dec.problem is not None else ""
        return problem or mech.unsupported_reason(case.with_(mode="fwd"))

    def tokens(self, case: Case) -> int:
        """One token per sequence: batch."""
        return case.batch

    def impl(self, mech: Mechanism, case: Case) -> str:
        return mech.decode.impl() if callable(mech.decode.impl) else mech.decode.impl

    def flops(self, mech: Mechanism, case: Case) -> float:
        models = self._models(mech)
        return models[0](case) if models else math.nan

    def bytes(self, mech: Mechanism, case: Case) -> float:
        models = self._models(mech)
        return models[1](case) if models else math.nan

    def memory_floor(self, mech: Mechanism, case: Case) -> float:
        """The cache or state held, and the token."""
        models = self._models(mech)
        return models[2](case) + registry.token_traffic(case) if models else 0.0

    def check_case(self, case: Case) -> Case:
        """The case's batch, heads, head dims, dtype and decay, a short odd context."""
        return case.with_(seq_len=DECODE_CHECK_CONTEXT)

    def check(self, mech: Mechanism, case: Case, device: str) -> checking.CheckResult:
        """DECODE_CHECK_STEPS steps against a context of ``case.seq_len`` tokens, compared
        with the float64 step of the cache kind's oracle (a state: the recurrence; a KV cache:
        plain softmax) on the same device: every output, and a state after the steps. A
        state's context is a seeded random float64 state at that context's scale (the step
        does not care how it was made; the kernels' tests check prefill's states against
        it); a KV cache holds the context's random keys and values."""
        oracle = registry.get(DECODE_ORACLE[mech.decode.cache])
        b, h, d, e = case.batch, case.heads, case.head_dim, case.value_dim
        # made and run in float64 on the run's device: a state of batch 256 is 1 GiB, which
        # the CPU would take seconds to fill and step
        gen = torch.Generator(device=device).manual_seed(1234)
        state64, n = None, case.seq_len
        f64 = dict(generator=gen, device=device, dtype=torch.float64)
        if mech.decode.cache == "state":
            state64 = math.sqrt(n) * torch.randn((b, h, d, e), **f64)
            n = 0  # the steps' tokens only
        qkv = [torch.randn((b, h, n + DECODE_CHECK_STEPS, x), **f64) for x in (d, d, e)]
        decay = checking.decay_rates(mech, case.decay, h, device)
        dtype = registry.DTYPES[case.dtype]

        def run(m: Mechanism, as_dtype) -> list[torch.Tensor]:
            return _decode_steps(m, m.decode.load(), qkv, decay, n, as_dtype, device, state64)

        ref = [x.cpu() for x in run(oracle, torch.float64)]  # rel_err compares on the CPU
        base = run(oracle, dtype)
        got = run(mech, dtype)
        err = max(checking.rel_err(g, r) for g, r in zip(got, ref))
        base_err = max(checking.rel_err(x, r) for x, r in zip(base, ref))
        return checking.CheckResult(err, max(2.0 * base_err, checking.TOL_FLOOR[case.dtype]),
                                    base_err)

    def prepare(self, mech: Mechanism, case: Case, device: str,
                fn: Callable | None = None) -> PreparedCall:
        """One token's q, k, v in the mechanism's layout and the context's cache, made before
        timing; the call is the mechanism's step (``fn``, the forward's callable, unused)."""
        step = mech.decode.load()
        q, k, v = checking.random_inputs(case.with_(seq_len=1), mech.layout, device, False,
                                         seed=case.seq_len)
        decay = checking.decay_rates(mech, case.decay, case.heads, device)
        cache = context_cache(mech, case, device, decay, seed=case.seq_len + 1)

        def call():
            return step(q, k, v, cache, decay)

        held = float(sum(x.numel() * x.element_size() for x in cache))
        return PreparedCall(case, mech, planted_slowdown(mech.name, call, device), [],
                            self.min_reps, cache_bytes=held)


FWD = Mode("fwd", "forward", _forward, grads=False)
BWD = Mode("bwd", "backward", _backward)
FWDBWD = Mode("fwdbwd", "forward+backward", _forward_backward)
DECODE = DecodeMode(
    "decode", "decode step", None, grads=False,
    metrics={"tokens": ("tokens_per_s", "tokens/s generated, batch / step time (higher is "
                        "better); columns: context length", _count, True),
             "time": ("time_ms", "step time, ms (median); columns: context length",
                      lambda x: f"{x:.3g}", True),
             "memory": ("cache_mib", "KV cache or state kept for the context, MiB", _count,
                        False)},
    figures=("decode",))
TRAIN = TrainMode(
    "train", "training step", None, min_reps=TRAIN_MIN_STEPS, follows_length=("batch",),
    metrics={"tokens": ("tokens_per_s", "TGS, tokens per GPU per second (higher is better)",
                        _count, True),
             "memory": ("extra_mem_mib", "memory above the model and its optimizer state, MiB",
                        _mib, False)},
    figures=("tgs",),
    checked_against="the fp32 reference model (loss, gradients) and the float64 oracle")
OPERATOR_MODES = (FWD, BWD, FWDBWD)  # an attention call of a training step
RUN_MODES = (*OPERATOR_MODES, DECODE)  # what `attnbench run --modes` takes
MODES = {m.name: m for m in (*RUN_MODES, TRAIN)}


def get(name: str) -> Mode:
    """The mode called ``name``; UsageError naming the known ones."""
    if name not in MODES:
        raise UsageError(f"unknown mode {name!r}; choose from {', '.join(MODES)}")
    return MODES[name]


def of(case: Case) -> Mode:
    return get(case.mode)


def figures(mode_names) -> list[str]:
    """The figures runs of these modes draw besides the sweep plots, each once."""
    return list(dict.fromkeys(f for name in mode_names if name in MODES
                              for f in MODES[name].figures))


def metric(name: str, metric: str, default: tuple) -> tuple:
    """How a report metric reads for the mode called ``name`` (``default`` where it reads as
    for an operator, or the mode is not known here)."""
    return MODES[name].metrics.get(metric, default) if name in MODES else default


def checked_against(names) -> str:
    """What the checks of runs of these modes compare with, in words."""
    return "; ".join(dict.fromkeys(MODES[n].checked_against if n in MODES
                                   else Mode.checked_against for n in names))


def rows(df, mode: Mode):
    """The rows of a records frame that are of ``mode``."""
    return df[df["mode"] == mode.name]
