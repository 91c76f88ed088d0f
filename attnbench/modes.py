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

A new mode (an inference step, say) is one more object here plus the mechanisms that take it.

Inputs are seeded random tensors made before timing in the mechanism's native layout (no
copy or transpose in the timed region). Backward calls drop old gradients first: do_bench
resets them only around its timed repetitions, and accumulating during its estimate and
warm-up would add a sum kernel and a second set of gradients (24 GiB at 256k in the paper
shape).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from attnbench import check
from attnbench.case import Case
from attnbench.errors import UsageError
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
        return check.check_case(case)

    def check(self, mech: Mechanism, case: Case, device: str) -> check.CheckResult:
        """``mech`` on ``check_case(case)`` against its float64 oracle."""
        return check.check(mech, self.check_case(case), device)

    def prepare(self, mech: Mechanism, case: Case, device: str,
                fn: Callable | None = None) -> PreparedCall:
        """Inputs and the call of ``case`` (``fn``: the mechanism's loaded callable)."""
        fn = fn if fn is not None else mech.callable()
        q, k, v = check.random_inputs(case, mech.layout, device, self.grads, seed=case.seq_len)
        decay = check.decay_rates(mech, case.decay, case.heads, device)
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
        return check.check_case(case).with_(batch=1, checkpointing=False)

    def check(self, mech: Mechanism, case: Case, device: str) -> check.CheckResult:
        """Two checks, the worse one kept (its error over its tolerance): the attention inside
        the model (its heads, head dims, precision and decay) against its float64 oracle, and
        the whole model's loss and gradients against the model in fp32 with the family's
        PyTorch reference (``check.check_model``), so that mechanisms timed in one model
        compute the same thing."""
        small = self.check_case(case)
        results = (check.check(mech, small.with_(model="", size=""), device),
                   check.check_model(mech, small, device))
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


FWD = Mode("fwd", "forward", _forward, grads=False)
BWD = Mode("bwd", "backward", _backward)
FWDBWD = Mode("fwdbwd", "forward+backward", _forward_backward)
TRAIN = TrainMode(
    "train", "training step", None, min_reps=TRAIN_MIN_STEPS, follows_length=("batch",),
    metrics={"tokens": ("tokens_per_s", "TGS, tokens per GPU per second (higher is better)",
                        _count, True),
             "memory": ("extra_mem_mib", "memory above the model and its optimizer state, MiB",
                        _mib, False)},
    figures=("tgs",),
    checked_against="the fp32 reference model (loss, gradients) and the float64 oracle")
OPERATOR_MODES = (FWD, BWD, FWDBWD)  # what `attnbench run --modes` takes
MODES = {m.name: m for m in (*OPERATOR_MODES, TRAIN)}


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
