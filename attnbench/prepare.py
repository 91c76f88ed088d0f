"""A case made ready to time: inputs in the mechanism's layout, and one call for its mode.

``prepare_call`` is the one place a ``Case`` becomes a timed call; the sweep, the
pytest-benchmark suite and notebooks all use it, so they time the same thing:

- ``fwd``: the forward pass.
- ``bwd``: the backward pass alone, from a graph built once and kept (``retain_graph``).
- ``fwdbwd``: both, as one call.
- ``train``: one training step of the case's model (``attnbench.models``) with the mechanism as
  its attention: forward, cross-entropy on seeded random tokens, backward, AdamW step, on
  ``batch`` x ``seq_len`` tokens. The first call allocates AdamW's state: the sweep's first
  calls (timed apart) are its warm-up.

Inputs are seeded random tensors made before timing in the mechanism's native layout (no
copy or transpose in the timed region). Backward calls drop old gradients first: do_bench
resets them only around its timed repetitions, and accumulating during its estimate and
warm-up would add a sum kernel and a second set of gradients (24 GiB at 256k in the paper
shape).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnbench import check, registry
from attnbench.case import Case
from attnbench.testing import planted_slowdown


@dataclass
class PreparedCall:
    case: Case
    mechanism: registry.Mechanism
    call: Callable[[], object]  # one call of the case's mode; asynchronous on a GPU
    inputs: list[torch.Tensor]  # the leaves whose gradients a call writes
    min_reps: int = 1  # timed repetitions the call needs at least (the timers' floor)

    def reset_grads(self) -> None:
        for x in self.inputs:
            x.grad = None

    @property
    def flops(self) -> float:
        """FLOPs of one call (``call_flops``)."""
        return call_flops(self.mechanism, self.case)

    @property
    def bytes(self) -> float:
        """Bytes one call must move at least, by the mechanism's byte model (its traffic)."""
        return self.mechanism.traffic(self.case)


def prepare_call(mech: registry.Mechanism, case: Case, device: str,
                 fn: Callable | None = None) -> PreparedCall:
    """Inputs and the call of ``case`` (``fn``: the mechanism's loaded callable, if at hand).

    Exceptions of the mechanism (an OOM making the graph for ``bwd``) propagate.
    """
    if case.mode == TRAIN:
        return _prepare_train(mech, case, device)
    fn = fn if fn is not None else mech.callable()
    grad = case.mode != "fwd"
    q, k, v = check.random_inputs(case, mech.layout, device, grad, seed=case.seq_len)
    decay = check.decay_rates(mech, case.decay, case.heads, device)
    inputs = [q, k, v]

    def reset_grads():
        for x in inputs:
            x.grad = None

    if case.mode == "fwd":
        def call():
            return fn(q, k, v, decay)
    elif case.mode == "bwd":
        out = fn(q, k, v, decay)  # the graph is kept; only the backward pass is timed
        d_out = torch.randn_like(out)

        def call():
            reset_grads()
            out.backward(d_out, retain_graph=True)
    else:
        with torch.no_grad():
            d_out = torch.randn_like(fn(q, k, v, decay))

        def call():
            reset_grads()
            fn(q, k, v, decay).backward(d_out)

    return PreparedCall(case, mech, planted_slowdown(mech.name, call, device), inputs)


# --- mode "train": a model's training step (attnbench.models) -------------------------------

TRAIN = "train"
TRAIN_MIN_STEPS = 5  # timed steps at least, however long one takes (warm-up steps apart)


@dataclass
class TrainCall(PreparedCall):
    """A prepared training step: at least TRAIN_MIN_STEPS timed, no byte model (a whole
    model)."""

    min_reps: int = TRAIN_MIN_STEPS

    @property
    def bytes(self) -> float:
        return float("nan")


def _config(case: Case):
    from attnbench.models import config_for

    return config_for(case.model, case.size)


def _prepare_train(mech: registry.Mechanism, case: Case, device: str) -> TrainCall:
    from attnbench.models import build_model, make_train_step

    model = build_model(case.model, case.size, mech.name, device, dtype_policy=case.dtype)
    step = make_train_step(model, case.batch, case.seq_len, device, case.checkpointing)
    # the step clears its own gradients (zero_grad(set_to_none)): no inputs to reset
    return TrainCall(case, mech, planted_slowdown(mech.name, step, device), [])


def unsupported_reason(mech: registry.Mechanism, case: Case) -> str:
    """Why ``mech`` cannot take ``case`` ("" if it can): the mechanism's own limits, and for a
    training step its limits at every attention layer of the model (``models``)."""
    if case.mode != TRAIN:
        return mech.unsupported_reason(case)
    from attnbench.models import unsupported_reason as model_reason

    return model_reason(_config(case), mech.name, case.seq_len, case.dtype)


def call_flops(mech: registry.Mechanism, case: Case) -> float:
    """FLOPs of one call: the mechanism's FLOP model for its mode; for a training step the
    model's (``models.train_flops_per_token`` x tokens)."""
    if case.mode != TRAIN:
        return mech.mode_flops(case)
    from attnbench.models import train_flops_per_token

    return train_flops_per_token(_config(case), case.seq_len) * case.tokens


def memory_floor(mech: registry.Mechanism, case: Case) -> float:
    """Bytes a call must hold at least (a case above the free memory is not tried): the
    mechanism's memory model; for a training step the model's parameters, gradients and AdamW
    state (``models.train_memory_floor``), activations on top."""
    if case.mode != TRAIN:
        return mech.memory(case)
    from attnbench.models import build_model, count_params, train_memory_floor

    params = count_params(build_model(case.model, case.size, mech.name, "meta", case.dtype))
    return float(train_memory_floor(params, case.dtype))
