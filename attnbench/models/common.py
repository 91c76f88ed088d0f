"""What both model families share: the mechanism check, the layouts, the precision policy,
the layer loop with optional activation checkpointing, and the weight init.

Shape letters as everywhere in attnbench: B batch, N sequence length, H heads, D q/k head dim,
E v/o head dim, C = H * D the model width.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from attnbench import registry
from attnbench.errors import UsageError

from .config import ATTENTION_FAMILY

# bf16: fp32 parameters, gradients and AdamW state ("master weights"); the forward and
#       backward run under torch.autocast(bfloat16), so matmuls and attention see bf16
#       inputs and norms, softmax and the loss stay in fp32 (PyTorch's standard AMP; nothing
#       to hand-write in the optimizer). 16 bytes per parameter before activations.
# fp32: everything fp32 (the CPU tests).
DTYPE_POLICIES = ("bf16", "fp32")


def check_policy(dtype_policy: str) -> str:
    if dtype_policy not in DTYPE_POLICIES:
        known = ", ".join(DTYPE_POLICIES)
        raise UsageError(f"unknown dtype policy {dtype_policy!r}; known: {known}")
    return dtype_policy


def precision(dtype_policy: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast region of ``dtype_policy`` on ``device`` (a no-op for fp32)."""
    if dtype_policy == "bf16" and device.type != "meta":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_mechanism(family: str, name: str) -> registry.Mechanism:
    """The registered mechanism ``name``, refused with a UsageError (a ValueError) if it is not
    of the family the model needs: softmax for llama, linear with decay for tnl."""
    mech = registry.get(name)
    want = ATTENTION_FAMILY[family]
    if mech.family != want:
        fits = ", ".join(m.name for m in registry.MECHANISMS if m.family == want)
        raise UsageError(f"{family} takes a {want} attention mechanism; {name} is {mech.family} "
                         f"(try {fits})")
    if family == "tnl" and not mech.decay:
        raise UsageError(f"tnl needs per-head decay; {name} takes none")
    if mech.layout not in ("bhnd", "bnhd"):
        raise UsageError(f"{name} has layout {mech.layout!r}; models know bhnd and bnhd")
    return mech


def to_native(x: torch.Tensor, layout: str) -> torch.Tensor:
    """(B, N, H, D) -> the mechanism's layout, as a view: bnhd as is, bhnd transposed.

    The projections write (B, N, H*D), so bnhd costs nothing; bhnd gets a strided view (the
    same the LLaMA and gpt-fast code make), which a kernel that needs contiguous rows copies
    (our lightning2 wrapper does, SDPA takes strides).
    """
    return x if layout == "bnhd" else x.transpose(1, 2)


def from_native(o: torch.Tensor, layout: str) -> torch.Tensor:
    """The mechanism's output -> (B, N, H*E): a view for bnhd, a copy for bhnd."""
    if layout == "bhnd":
        o = o.transpose(1, 2)  # [B, N, H, E]
    return o.reshape(o.shape[0], o.shape[1], -1)  # [B, N, H*E]


def run_layers(layers: nn.ModuleList, x: torch.Tensor, extras: list[tuple],
               checkpointing: bool) -> torch.Tensor:
    """x through every layer (layer i gets ``x, *extras[i]``); with ``checkpointing`` each
    layer keeps only its input and recomputes its inside during the backward."""
    for layer, extra in zip(layers, extras, strict=True):
        if checkpointing:
            x = checkpoint(layer, x, *extra, use_reentrant=False)
        else:
            x = layer(x, *extra)
    return x


def lm_head_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; under autocast it runs in fp32."""
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """Normal(0, 0.02) for every linear and embedding weight (init_std of the TNL configs,
    GPT-2's value); norms keep their ones. A no-op on the meta device."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
