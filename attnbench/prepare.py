"""A case made ready to time: inputs in the mechanism's layout, and one call for its mode.

``prepare_call`` is the one place a ``Case`` becomes a timed call; the sweep, the
pytest-benchmark suite and notebooks all use it, so they time the same thing:

- ``fwd``: the forward pass.
- ``bwd``: the backward pass alone, from a graph built once and kept (``retain_graph``).
- ``fwdbwd``: both, as one call.

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

    def reset_grads(self) -> None:
        for x in self.inputs:
            x.grad = None

    @property
    def flops(self) -> float:
        """FLOPs of one call by the mechanism's model."""
        return self.mechanism.mode_flops(self.case)

    @property
    def bytes(self) -> float:
        """Bytes one call must move at least, by the mechanism's byte model (its traffic)."""
        return self.mechanism.traffic(self.case)


def prepare_call(mech: registry.Mechanism, case: Case, device: str,
                 fn: Callable | None = None) -> PreparedCall:
    """Inputs and the call of ``case`` (``fn``: the mechanism's loaded callable, if at hand).

    Exceptions of the mechanism (an OOM making the graph for ``bwd``) propagate.
    """
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
