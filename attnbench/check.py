"""Inputs in each mechanism's layout, and the correctness check against a float64 oracle.

Before a mechanism is timed, it runs on a small shape of fresh random inputs (an odd length,
so partial blocks are exercised) in the case's dtype, on the run's device; its output and
gradients are compared with its oracle run in float64 on the CPU. The tolerance follows
FlashAttention's rule: the mechanism may err at most twice as much as plain PyTorch in the
same dtype (the family's DTYPE_BASELINE), with a floor per dtype for TF32 and rounding.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from attnbench import registry
from attnbench.case import Case
from attnbench.registry import Mechanism

# The check runs the case's batch and heads (an autotuner keyed on them, as FLA's are, then
# tunes once for the check and the timing), at a short odd length.
CHECK_SEQ_LEN = 100
# Relative-error floors: TF32 dots for fp32 (~3e-4 typical), one rounding of the output for
# half types; far below what a wrong kernel gives (order 1).
TOL_FLOOR = {"fp32": 2e-3, "fp16": 4e-3, "bf16": 3e-2}


def to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """(B, H, N, D) -> the layout a mechanism takes, as a contiguous tensor."""
    return x if layout == "bhnd" else x.transpose(1, 2).contiguous()


def from_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x if layout == "bhnd" else x.transpose(1, 2)


def random_inputs(case: Case, layout: str, device: str, requires_grad: bool,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random q, k (head dim D) and v (value dim E) of ``case``, made directly in
    ``layout`` in the case's dtype (no copy later, never zeros)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = registry.DTYPES[case.dtype]

    def make(dim: int) -> torch.Tensor:
        b, h, n = case.batch, case.heads, case.seq_len
        shape = (b, h, n, dim) if layout == "bhnd" else (b, n, h, dim)
        x = torch.randn(shape, generator=gen, device=device, dtype=dtype)
        return x.requires_grad_(requires_grad)

    return make(case.head_dim), make(case.head_dim), make(case.value_dim)


def decay_rates(mech: Mechanism, decay: bool, heads: int, device: str) -> torch.Tensor | None:
    """The paper's default per-head rates for a decay case, else None."""
    if not (decay and mech.decay):
        return None
    from attnbench.kernels import default_decay

    return default_decay(heads, device=device)


@dataclass(frozen=True)
class CheckResult:
    max_rel_err: float
    tol: float
    baseline_err: float

    @property
    def passed(self) -> bool:
        return self.max_rel_err <= self.tol  # NaN fails


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got = got.detach().to(device="cpu", dtype=torch.float64)
    ref = ref.detach()
    return float((got - ref).norm() / ref.norm().clamp_min(1e-300))


def _outputs(mech: Mechanism, fn, qkv64, do64, decay64, dtype, device, backward):
    """Output and gradients of ``fn`` on the float64 inputs cast to dtype/device, in bhnd."""
    q, k, v = (to_layout(x.detach().to(device=device, dtype=dtype), mech.layout)
               .requires_grad_(backward) for x in qkv64)
    decay = decay64.to(device=device, dtype=torch.float32) if decay64 is not None else None
    o = fn(q, k, v, decay)
    outs = [from_layout(o, mech.layout)]
    if backward:
        o.backward(to_layout(do64.to(device=device, dtype=o.dtype), mech.layout))
        outs += [from_layout(x.grad, mech.layout) for x in (q, k, v)]
    return outs


def check_case(case: Case) -> Case:
    """The short odd-length case that checks ``case``'s mechanism, shape, dtype and decay (a
    sequence-parallel case: a length its ranks share evenly). A mode may check another case
    (``attnbench.modes``: a training step checks the attention inside its model)."""
    w = case.world_size
    return case.with_(mode="fwdbwd", seq_len=w * math.ceil(CHECK_SEQ_LEN / w))


@dataclass(frozen=True)
class CheckPart:
    """What one process measured of a check: per output and gradient, the squared error of
    its piece and the squared norm of the oracle's piece; and the dtype baseline's error."""

    squares: list[tuple[float, float]]
    baseline_err: float


def check_part(mech: Mechanism, case: Case, device: str, fn=None,
               piece: slice = slice(None)) -> CheckPart:
    """Run ``mech`` (``fn``: its callable, bound to a process group where it needs one) on
    ``piece`` of the sequence of ``check_case(case)``'s float64 inputs; compare with the
    oracle's output and gradients over the whole sequence, restricted to that piece."""
    oracle = registry.get(mech.oracle)
    baseline = registry.get(registry.DTYPE_BASELINE[mech.family])
    gen = torch.Generator().manual_seed(1234)
    small = check_case(case)
    shape = (small.batch, small.heads, small.seq_len)
    qkv64 = [torch.randn((*shape, dim), generator=gen, dtype=torch.float64)
             for dim in (small.head_dim, small.head_dim, small.value_dim)]
    do64 = torch.randn((*shape, small.value_dim), generator=gen, dtype=torch.float64)
    rates = decay_rates(mech, case.decay, small.heads, "cpu")
    decay64 = rates.double() if rates is not None else None
    backward = mech.backward
    dtype = registry.DTYPES[case.dtype]

    ref = _outputs(oracle, oracle.callable(), qkv64, do64, decay64, torch.float64, "cpu", backward)
    base = _outputs(baseline, baseline.callable(), qkv64, do64, decay64, dtype, device, backward)
    got = _outputs(mech, fn if fn is not None else mech.callable(),
                   [x[:, :, piece] for x in qkv64], do64[:, :, piece], decay64, dtype, device,
                   backward)
    base_err = max(rel_err(g, r) for g, r in zip(base, ref))
    ref = [r.detach()[:, :, piece] for r in ref]
    squares = [(float((g.detach().cpu().double() - r).norm() ** 2),
                float(r.norm() ** 2)) for g, r in zip(got, ref)]
    return CheckPart(squares, base_err)


def combine(parts: list[CheckPart], dtype: str) -> CheckResult:
    """The check of the whole sequence from the parts of its pieces: the worst relative error
    of output and gradients against the tolerance of ``dtype``."""
    err = max(math.sqrt(sum(p.squares[i][0] for p in parts)
                        / max(1e-300, sum(p.squares[i][1] for p in parts)))
              for i in range(len(parts[0].squares)))
    base_err = parts[0].baseline_err
    return CheckResult(err, max(2.0 * base_err, TOL_FLOOR[dtype]), base_err)


def check(mech: Mechanism, case: Case, device: str) -> CheckResult:
    """Compare ``mech`` (output and, where it has a backward, gradients) with its oracle on
    fresh float64 inputs of ``check_case(case)``'s shape."""
    return combine([check_part(mech, case, device)], case.dtype)


@functools.lru_cache(maxsize=2)  # a run's two families; a 3B model's gradients are 12 GB
def _model_reference(family: str, size: str, device: str, dtype: str, seq_len: int
                     ) -> tuple[float, dict[str, torch.Tensor], float]:
    """The model with its family's PyTorch reference attention: loss and gradients in fp32,
    and how far the same model under the ``dtype`` policy is from them (the baseline)."""
    from attnbench import models

    reference = registry.DTYPE_BASELINE[models.ATTENTION_FAMILY[family]]
    ref_loss, ref_grads = models.loss_and_gradients(family, size, reference, device, "fp32",
                                                    seq_len)
    loss, grads = models.loss_and_gradients(family, size, reference, device, dtype, seq_len)
    return ref_loss, ref_grads, _model_err(loss, grads, ref_loss, ref_grads)


def _model_err(loss: float, grads: dict, ref_loss: float, ref_grads: dict) -> float:
    """The larger of the loss's relative error and the gradients' (all parameters as one
    vector); NaN if a parameter's gradient is missing."""
    if grads.keys() != ref_grads.keys():
        return math.nan
    diff = math.sqrt(sum(float((grads[n].double() - g.double()).norm() ** 2)
                         for n, g in ref_grads.items()))
    norm = math.sqrt(sum(float(g.double().norm() ** 2) for g in ref_grads.values()))
    return max(abs(loss - ref_loss) / max(abs(ref_loss), 1e-300), diff / max(norm, 1e-300))


def check_model(mech: Mechanism, case: Case, device: str) -> CheckResult:
    """The loss and gradients of ``case``'s model (``case.model``, ``case.size``) with ``mech``
    as its attention, under the ``case.dtype`` policy, on ``case.seq_len`` tokens (batch 1),
    against the same model in fp32 with its family's PyTorch reference attention
    (``DTYPE_BASELINE``): same seeded weights and batch (``models.loss_and_gradients``).
    Tolerance as for a call: twice the reference model's own error under the same policy,
    floored at the fp32 floor."""
    from attnbench import models

    ref_loss, ref_grads, base_err = _model_reference(case.model, case.size, device, case.dtype,
                                                     case.seq_len)
    loss, grads = models.loss_and_gradients(case.model, case.size, mech.name, device, case.dtype,
                                            case.seq_len)
    err = _model_err(loss, grads, ref_loss, ref_grads)
    return CheckResult(err, max(2.0 * base_err, TOL_FLOOR["fp32"]), base_err)
