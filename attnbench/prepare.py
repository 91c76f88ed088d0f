"""A case made ready to time: ``prepare_call(mechanism, case, device)``.

The one place a ``Case`` becomes a timed call; the sweep, the pytest-benchmark suite and
notebooks all use it, so they time the same thing. What the call is, what it costs and what
limits it has are the case's mode's (``attnbench.modes``); these functions ask it.
"""

from __future__ import annotations

from collections.abc import Callable

from attnbench import modes, registry
from attnbench.case import Case
from attnbench.modes import TRAIN_MIN_STEPS, PreparedCall  # noqa: F401 (importable from here)

TRAIN = modes.TRAIN.name


def prepare_call(mech: registry.Mechanism, case: Case, device: str,
                 fn: Callable | None = None) -> PreparedCall:
    """Inputs and the call of ``case`` (``fn``: the mechanism's loaded callable, if at hand).

    Exceptions of the mechanism (an OOM making the graph for ``bwd``) propagate.
    """
    return modes.of(case).prepare(mech, case, device, fn)


def unsupported_reason(mech: registry.Mechanism, case: Case) -> str:
    """Why ``mech`` cannot take ``case`` ("" if it can): its limits in the case's mode."""
    return modes.of(case).unsupported_reason(mech, case)


def call_flops(mech: registry.Mechanism, case: Case) -> float:
    """FLOPs of one call, by the case's mode's FLOP model."""
    return modes.of(case).flops(mech, case)


def memory_floor(mech: registry.Mechanism, case: Case) -> float:
    """Bytes a call must hold at least (a case above the free memory is not tried)."""
    return modes.of(case).memory_floor(mech, case)
