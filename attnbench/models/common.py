"""What both model families share: the decoder skeleton (``Decoder``, ``PreNormBlock``), the
mechanism check, the layouts, the precision policy, the layer loop with optional activation
checkpointing, and the weight init.

Shape letters as everywhere in attnbench: B batch, N sequence length, H heads, D q/k head dim,
E v/o head dim, C = H * D the model width.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from attnbench import registry
from attnbench.errors import UsageError

from .config import ATTENTION_FAMILY

# bf16: fp32 parameters, gradients and AdamW state ("master weights"); the forward and
#       backward run under torch.autocast(bfloat16), so matmuls and attention see bf16
#       inputs and norms, softmax and the loss stay in fp32 (PyTorch's standard AMP; nothing
#       to hand-write in the optimizer). 16 bytes per parameter before activations, and
#       the bf16 weight copies autocast makes in each forward (2 more, freed by the step).
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
        fits = ", ".join(m.name for m in registry.MECHANISMS
                         if m.family == want and (m.decay or family == "llama"))
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
    same the LLaMA and gpt-fast code make). Where the model writes q and k anew (rotary in
    llama, LRPE in tnl's first layer) it writes them in the layout, contiguous; v, and tnl's
    swish(q), swish(k) elsewhere, stay strided, and a kernel that needs contiguous rows
    copies them (our lightning2 wrapper does; SDPA takes strides).
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


class PreNormBlock(nn.Module):
    """The block of both decoders: x + mixer(mixer_norm(x), *extra), then
    x + mlp(mlp_norm(x)). A family names the four parts as its paper does (``PARTS``)."""

    PARTS = ("mixer_norm", "mixer", "mlp_norm", "mlp")

    def __init__(self, *parts: nn.Module):
        super().__init__()
        for name, part in zip(self.PARTS, parts, strict=True):
            setattr(self, name, part)

    def forward(self, x: torch.Tensor, *extra) -> torch.Tensor:
        mixer_norm, mixer, mlp_norm, mlp = (getattr(self, name) for name in self.PARTS)
        x = x + mixer(mixer_norm(x), *extra)  # [B, N, C]
        return x + mlp(mlp_norm(x))  # [B, N, C]


class Decoder(nn.Module):
    """A decoder-only language model: token embedding, ``layers``, a final ``norm``, an output
    projection (tied to the embedding where the config says so), weights drawn by
    ``init_weights``. ``forward(ids)`` is the model alone (logits); the training step
    (``train.lm_step_loss``) owns the loss, activation checkpointing and the precision policy.

    A family names its embedding and output projection as its paper's code does (``NAMES``),
    makes its blocks (``block``) and its final norm (``final_norm``), and gives each layer its
    extra inputs (``layer_inputs``)."""

    NAMES = ("embedding", "head")  # the attributes of the token embedding and the projection

    def __init__(self, config, mechanism: registry.Mechanism, dtype_policy: str, device=None):
        super().__init__()
        self.config, self.mechanism, self.dtype_policy = config, mechanism, dtype_policy
        attn_fn = mechanism.callable()
        norm = self.final_norm(config, device)
        setattr(self, self.NAMES[0], nn.Embedding(config.vocab_size, config.dim, device=device))
        self.layers = nn.ModuleList(self.block(config, i, attn_fn, mechanism.layout, device)
                                    for i in range(config.n_layers))
        self.norm = norm
        setattr(self, self.NAMES[1],
                nn.Linear(config.dim, config.vocab_size, bias=False, device=device))
        init_weights(self)
        if config.tie_embeddings:
            self.head.weight = self.token_embedding.weight

    def block(self, config, layer: int, attn_fn: Callable, layout: str, device) -> nn.Module:
        """Layer ``layer`` of the model, its attention through ``attn_fn`` in ``layout``."""
        raise NotImplementedError

    def final_norm(self, config, device) -> nn.Module:
        raise NotImplementedError

    @property
    def token_embedding(self) -> nn.Embedding:
        return getattr(self, self.NAMES[0])

    @property
    def head(self) -> nn.Linear:
        return getattr(self, self.NAMES[1])

    def layer_inputs(self, ids: torch.Tensor) -> list[tuple]:
        return [()] * len(self.layers)

    def hidden(self, ids: torch.Tensor, checkpointing: bool = False) -> torch.Tensor:
        """The final normed hidden states ``(B, N, C)`` of token ids ``(B, N)``;
        ``checkpointing``: each layer recomputed in the backward rather than kept."""
        x = self.token_embedding(ids)  # [B, N, C]
        x = run_layers(self.layers, x, self.layer_inputs(ids), checkpointing)
        return self.norm(x)  # [B, N, C]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, N, V)`` of token ids ``(B, N)``."""
        return self.head(self.hidden(ids))


def compute_dtype(dtype_policy: str) -> torch.dtype:
    return torch.bfloat16 if dtype_policy == "bf16" else torch.float32


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``h @ weight.T`` without the (T, V) logits ever in memory whole.

    The forward walks ``chunk`` tokens at a time: logits in fp32, their loss, and at once the
    gradient d loss / d logits = softmax - onehot, turned into the chunk's grad of h and its
    share of the grad of the weight; the backward only scales those. The same three matmuls
    as an unchunked forward and backward (no recomputation), but the memory of one chunk's
    logits rather than of all (at 128K tokens and a 64000 vocabulary the fp32 logits and
    their gradient alone would be 67 GB).
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk):  # h [T, C], weight [V, C], targets [T]
        w = weight.to(h.dtype)  # [V, C] in the compute dtype
        grad_h = torch.empty_like(h)  # [T, C]
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # [V, C]
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, h.shape[0], chunk):
            h_c, t_c = h[start:start + chunk], targets[start:start + chunk]  # [T_c, C], [T_c]
            logits = (h_c @ w.T).float()  # [T_c, V]
            lse = torch.logsumexp(logits, dim=-1)  # [T_c]
            total += (lse - logits.gather(1, t_c[:, None]).squeeze(1)).sum()
            g = logits.sub_(lse[:, None]).exp_()  # [T_c, V] softmax, in place of the logits
            g[torch.arange(g.shape[0], device=g.device), t_c] -= 1.0
            g = g.to(h.dtype)  # [T_c, V]
            grad_h[start:start + chunk] = g @ w  # [T_c, C]
            grad_w += (g.T @ h_c).float()  # [V, C]
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype, ctx.tokens = weight.dtype, h.shape[0]
        return total / h.shape[0]

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_out / ctx.tokens
        return grad_h * scale.to(grad_h.dtype), (grad_w * scale).to(ctx.weight_dtype), None, None


def lm_loss(h: torch.Tensor, head: nn.Linear, targets: torch.Tensor, dtype_policy: str,
            loss_chunk: int | None) -> torch.Tensor:
    """Mean next-token cross-entropy (fp32) of the output projection ``head`` of the final
    hidden states h ``(B, N, C)`` against targets ``(B, N)``.

    ``loss_chunk=None``: the plain way, logits ``(B, N, V)`` in the compute dtype, then
    F.cross_entropy (fp32 under autocast). An int: ``ChunkedLinearCrossEntropy`` with that
    many tokens a chunk, the same loss and gradients in O(chunk x V) memory.
    """
    if loss_chunk is None:
        logits = head(h)  # [B, N, V]
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    if loss_chunk < 1:
        raise ValueError(f"loss_chunk must be >= 1 or None; got {loss_chunk}")
    h = h.flatten(0, 1).to(compute_dtype(dtype_policy))  # [T, C]
    return ChunkedLinearCrossEntropy.apply(h, head.weight, targets.flatten(), loss_chunk)


def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """Normal(0, 0.02) for every linear and embedding weight (init_std of the TNL configs,
    GPT-2's value); norms keep their ones. A no-op on the meta device."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
