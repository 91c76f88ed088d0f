"""A LLaMA-style decoder (arXiv 2302.13971): pre-norm RMSNorm, SwiGLU MLP, rotary position
embeddings, causal softmax attention through a registered softmax mechanism.

Followed: the block (x + attn(norm(x)), then x + mlp(norm(x))), RMSNorm with a gain, the
SwiGLU w2(silu(w1 x) * w3 x), rotary embeddings on q and k, no biases, untied output
embedding, the final norm. Simplified: one fused q/k/v projection (gpt-fast's wqkv; the same
matmul work as three), rotary in the "rotate half" pairing (GPT-NeoX / Hugging Face) rather
than Meta's interleaved pairs (the same cost; weights are not interchangeable, which does
not matter here), full multi-head attention (no grouped-query heads, as in LLaMA 1).
The 1/sqrt(D) scale and the causal mask are the mechanism's: every registered softmax
mechanism is causal with that scale.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import Decoder, PreNormBlock, from_native, to_native
from .config import ModelConfig


class RMSNorm(nn.Module):
    """x / rms(x) * g, computed in fp32 and returned in x's dtype."""

    def __init__(self, dim: int, eps: float, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)  # [B, N, C]
        return (y * self.weight).type_as(x)


def rope_tables(n: int, head_dim: int, base: float, device,
                layout: str = "bnhd") -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles t * base^(-2i/D), fp32, shaped to broadcast over q in
    ``layout``: ``(N, 1, D/2)`` for (B, N, H, D/2), ``(N, D/2)`` for (B, H, N, D/2)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
                        / head_dim)  # [D/2]
    angles = torch.outer(torch.arange(n, device=device, dtype=torch.float32), inv_freq)  # [N, D/2]
    if layout == "bnhd":
        angles = angles[:, None, :]  # [N, 1, D/2]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x_i, x_{i+D/2}) of x (either layout) by the angles; fp32 inside.

    The result is a new contiguous tensor of x's shape: given a transposed (B, H, N, D) view,
    the rotation writes q and k in (B, H, N, D) order, so a bhnd mechanism gets them without
    a copy of its own.
    """
    x1, x2 = x.float().chunk(2, dim=-1)  # [..., D/2] each
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # [..., D]
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, attn_fn, layout: str, device=None):
        super().__init__()
        c, self.h, self.d = config.dim, config.n_heads, config.head_dim
        self.wqkv = nn.Linear(c, 3 * self.h * self.d, bias=False, device=device)
        self.wo = nn.Linear(self.h * self.d, c, bias=False, device=device)
        self.attn_fn, self.layout = attn_fn, layout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.wqkv(x).chunk(3, dim=-1)  # [B, N, H*D] views each
        # In the mechanism's layout from here: [B, N, H, D] or [B, H, N, D].
        q = apply_rope(to_native(q.view(b, n, self.h, self.d), self.layout), cos, sin)
        k = apply_rope(to_native(k.view(b, n, self.h, self.d), self.layout), cos, sin)
        v = to_native(v.view(b, n, self.h, self.d), self.layout)  # a view; E = D
        o = self.attn_fn(q, k, v, None)  # [B, N, H, E] or [B, H, N, E]
        return self.wo(from_native(o, self.layout))  # [B, N, C]


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int, device=None):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False, device=device)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False, device=device)  # up
        self.w2 = nn.Linear(hidden, dim, bias=False, device=device)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # [B, N, F] inside, [B, N, C] out


class Block(PreNormBlock):
    PARTS = ("attention_norm", "attention", "ffn_norm", "feed_forward")  # x, cos, sin

    def __init__(self, config: ModelConfig, attn_fn, layout: str, device=None):
        c, eps = config.dim, config.norm_eps
        super().__init__(RMSNorm(c, eps, device), Attention(config, attn_fn, layout, device),
                         RMSNorm(c, eps, device), FeedForward(c, config.ffn_dim, device))


class LLaMA(Decoder):
    """``LLaMA(config, mechanism, dtype_policy, device)``: see ``common.Decoder``."""

    NAMES = ("tok_embeddings", "output")

    def block(self, config: ModelConfig, layer: int, attn_fn, layout: str, device) -> Block:
        return Block(config, attn_fn, layout, device)

    def final_norm(self, config: ModelConfig, device) -> RMSNorm:
        return RMSNorm(config.dim, config.norm_eps, device)

    def layer_inputs(self, ids: torch.Tensor) -> list[tuple]:
        """The rotary tables of the length, the same for every layer."""
        cos, sin = rope_tables(ids.shape[1], self.config.head_dim, self.config.rope_base,
                               ids.device, self.mechanism.layout)
        return [(cos, sin)] * len(self.layers)

    @staticmethod
    def matmul_params(config: ModelConfig) -> int:
        """Weights that take part in a matmul per token (all but the embedding lookup and
        the norm gains): the ``6 * params`` of the FLOP count."""
        c, hd, f = config.dim, config.n_heads * config.head_dim, config.ffn_dim
        per_layer = 3 * c * hd + hd * c + 3 * c * f
        return config.n_layers * per_layer + c * config.vocab_size
