"""Inputs in each mechanism's layout, and the correctness check against a float64 oracle.

Before a mechanism is timed, it runs on a small shape of fresh random inputs (an odd length,
so partial blocks are exercised) in the case's dtype, on the run's device; its output and
gradients are compared with its oracle run in float64 on the CPU. The tolerance follows
FlashAttention's rule: the mechanism may err at most twice as much as plain PyTorch in the
same dtype (the family's DTYPE_BASELINE), with a floor per dtype for TF32 and rounding.
"""

from __future__ import annotations

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
    """The short odd-length case that checks ``case``'s mechanism, shape, dtype and decay.

    A training step (mode ``train``) checks the attention inside its model: the model's heads,
    head dims, precision and decay, at batch 1 (its batch follows the length)."""
    small = case.with_(mode="fwdbwd", seq_len=CHECK_SEQ_LEN)
    if case.mode == "train":
        small = small.with_(batch=1, model="", size="", checkpointing=False)
    return small


def check(mech: Mechanism, case: Case, device: str) -> CheckResult:
    """Compare ``mech`` (output and, where it has a backward, gradients) with its oracle on
    fresh float64 inputs of ``check_case(case)``'s shape."""
    oracle = registry.get(mech.oracle)
    baseline = registry.get(registry.DTYPE_BASELINE[mech.family])
    gen = torch.Generator().manual_seed(1234)
    small = check_case(case)
    shape = (small.batch, small.heads, small.seq_len)
    q64, k64, v64 = (torch.randn((*shape, dim), generator=gen, dtype=torch.float64)
                     for dim in (small.head_dim, small.head_dim, small.value_dim))
    qkv64 = [q64, k64, v64]
    do64 = torch.randn((*shape, small.value_dim), generator=gen, dtype=torch.float64)
    dtype, decay = case.dtype, case.decay
    rates = decay_rates(mech, decay, small.heads, "cpu")
    decay64 = rates.double() if rates is not None else None
    backward = mech.backward
    torch_dtype = registry.DTYPES[dtype]

    ref = _outputs(oracle, oracle.callable(), qkv64, do64, decay64, torch.float64, "cpu", backward)
    got = _outputs(mech, mech.callable(), qkv64, do64, decay64, torch_dtype, device, backward)
    base = _outputs(baseline, baseline.callable(), qkv64, do64, decay64, torch_dtype, device,
                    backward)
    err = max(rel_err(g, r) for g, r in zip(got, ref))
    base_err = max(rel_err(g, r) for g, r in zip(base, ref))
    return CheckResult(err, max(2.0 * base_err, TOL_FLOOR[dtype]), base_err)
