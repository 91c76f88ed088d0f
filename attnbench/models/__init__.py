"""Model-level training steps: LLaMA and TransNormerLLM around registered mechanisms.

    model = build_model("tnl", "0.4b", "lightning2", "cuda", "bf16")
    step = make_train_step(model, batch=2, seq_len=8192, device="cuda", checkpointing=False)
    step()  # forward, cross-entropy, backward, AdamW step, zero_grad
    tgs = step.tokens / seconds_per_step
    tflops = train_flops_per_token(model.config, 8192) * step.tokens / seconds_per_step / 1e12

One file a family (``llama.py``, ``tnl.py``); shapes and their sources in ``config.py``; the
step, FLOPs and parameter count in ``train.py``; what both families share in ``common.py``.
"""

from __future__ import annotations

import torch

from attnbench.case import Case
from attnbench.errors import UsageError

from .common import DTYPE_POLICIES, check_policy, resolve_mechanism
from .config import (
    ATTENTION_FAMILY,
    DEFAULT_MECHANISM,
    FAMILIES,
    SIZES,
    ModelConfig,
    config_for,
    llama_ffn_dim,
)
from .llama import LLaMA
from .tnl import TNL
from .train import (
    TrainStep,
    attention_flops_per_token,
    count_params,
    lm_step_loss,
    make_train_step,
    matmul_params,
    seeded_batch,
    train_flops_per_token,
    train_memory_floor,
)

__all__ = [
    "ATTENTION_FAMILY", "DEFAULT_MECHANISM", "DTYPE_POLICIES", "FAMILIES", "SIZES", "LLaMA",
    "ModelConfig", "TNL", "TrainStep", "attention_flops_per_token", "build_model",
    "config_for", "count_params", "llama_ffn_dim", "loss_and_gradients", "make_train_step",
    "matmul_params", "train_flops_per_token", "train_memory_floor", "unsupported_reason",
]

_CLASSES = {"llama": LLaMA, "tnl": TNL}


def build_model(family: str, size: str, mechanism: str, device, dtype_policy: str = "bf16",
                *, config: ModelConfig | None = None, seed: int = 0) -> LLaMA | TNL:
    """A ``family`` model ("llama" | "tnl") of ``size`` (a key of SIZES) on ``device``, its
    attention done by the registered ``mechanism``.

    Parameters are fp32 under both dtype policies ("bf16": the forward and backward run under
    bf16 autocast; "fp32": they do not). ``device="meta"`` builds without memory (parameter
    counts). ``config`` replaces the preset (e.g. ``config_for(...).with_(n_layers=1)``).
    Weights are drawn from ``seed`` without touching the global RNG state.

    Raises UsageError (a ValueError) for an unknown family, size, mechanism or policy, and for
    a mechanism of the wrong family (softmax for tnl, linear for llama, one without decay for
    tnl). Whether the mechanism can run on ``device`` is not checked here: ask
    ``registry.get(mechanism).available(device)`` and ``unsupported_reason``.
    """
    config = config if config is not None else config_for(family, size)
    if config.family != family:
        raise UsageError(f"build_model({family!r}, ...) was given a {config.family} config")
    mech = resolve_mechanism(config.family, mechanism)
    check_policy(dtype_policy)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        # Every tensor is made with device= rather than under ``with torch.device(...)``: that
        # context caches torch's factory functions once, and a patched torch.empty (the test
        # suite's NaN poisoning) makes it silently allocate on the CPU.
        return _CLASSES[config.family](config, mech, dtype_policy, device)


def unsupported_reason(config: ModelConfig, mechanism: str, seq_len: int,
                       dtype_policy: str = "bf16") -> str:
    """Why ``mechanism`` cannot train this model at ``seq_len`` (its head dims, dtype or its
    own per-case limits, for every layer's (D, E)), or "" if it can."""
    mech = resolve_mechanism(config.family, mechanism)
    dtype = "bf16" if check_policy(dtype_policy) == "bf16" else "fp32"
    for d, e in sorted(set(config.attention_dims())):
        case = Case(mechanism=mech.name, mode="fwdbwd", batch=1, heads=config.n_heads,
                    seq_len=seq_len, head_dim=d, value_dim=e, dtype=dtype,
                    decay=config.family == "tnl")
        reason = mech.unsupported_reason(case)
        if reason:
            return reason
    return ""


def loss_and_gradients(family: str, size: str, mechanism: str, device, dtype_policy: str,
                       seq_len: int, batch: int = 1, seed: int = 0
                       ) -> tuple[float, dict[str, torch.Tensor]]:
    """The mean cross-entropy of a ``family`` model of ``size`` with ``mechanism`` as its
    attention, on ``batch`` x ``seq_len`` seeded random tokens, and the gradient of every
    parameter (fp32, on the CPU, by name): one forward and backward, no optimizer step. The
    weights and tokens depend only on ``seed``, so two mechanisms get the same model and batch.
    """
    model = build_model(family, size, mechanism, device, dtype_policy, seed=seed)
    loss = lm_step_loss(model, *seeded_batch(model, batch, seq_len, device, seed))
    loss.backward()
    grads = {name: p.grad.detach().float().cpu() for name, p in model.named_parameters()
             if p.grad is not None}
    return float(loss.detach()), grads
