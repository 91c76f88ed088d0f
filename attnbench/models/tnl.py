"""A TransNormerLLM-style decoder (TNL, arXiv 2307.14995) around a registered linear attention
mechanism with decay (default ``lightning2``).

Followed (the TNL paper and its authors' released code: the Hugging Face TransNormerLLM
configs and nanoTransNormer, read for shapes and formulas):

- the block: x + GLA(SRMSNorm(x)), then x + SGLU(SRMSNorm(x)); a final SRMSNorm; tied input
  and output embeddings; no biases.
- SRMSNorm (the paper's "simple RMSNorm"): x / rms(x), no gain, no bias.
- SGLU (the paper's "simple GLU"): W_o[(X W_v) * (X W_u)], no activation at all.
- GLA, the gated linear attention token mixer: one projection to q, k, v and the output gate
  u; q = swish(.), k = swish(.) (the releases' ``linear_act_fun = swish``); per-head
  exponential decay; no softmax and no 1/sqrt(D) scale (the mechanism's semantics); the
  attention output normalised by SRMSNorm over the whole width, gated by u (no activation
  on u), then W_o.
- decay: TNL's code decays layer l of L (0-based) at s_{h,l} = s_h * (1 - l/(L-1) + 1e-5),
  where s_h are the ALiBi slopes = the paper's default rates s_h = 2^(-8h/H) for H a power
  of two (``default_decay``). So the first layer decays with the default rates and the last
  one barely at all. We follow TNL here, not the operator benchmark's single default; for H
  not a power of two (the 3b preset has 20 heads) TNL's code takes ALiBi's interleaved
  slopes, we keep the plain formula 2^(-8h/H) (rates only: no effect on speed).
- LRPE on the first layer only (``linear_use_lrpe_list = [1, 0, ...]``): q and k become
  [x cos(theta t), x sin(theta t)], doubling their head dim there (D = 2 * 128 for the paper
  sizes), theta_i = 10000^(-2i/C) over the whole width, trainable.

Simplified: the embedding is not scaled by sqrt(C) (one release config does, later ones do
not); the norm eps is ours; no padding masks or inference cache.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from attnbench.kernels import default_decay

from .common import Decoder, PreNormBlock, from_native, to_native
from .config import ModelConfig


class SRMSNorm(nn.Module):
    """Simple RMSNorm: x / rms(x), no parameters; computed in fp32, returned in x's dtype."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


def tnl_decay(n_heads: int, layer: int, n_layers: int, device=None) -> torch.Tensor:
    """TNL's per-layer decay rates s_h * (1 - l/(L-1) + 1e-5): float32 ``(H,)``, all > 0."""
    factor = 1.0 - layer / (n_layers - 1) + 1e-5 if n_layers > 1 else 1.0
    return default_decay(n_heads, device) * factor


class Lrpe(nn.Module):
    """LRPE: x -> [x cos(theta t), x sin(theta t)], doubling the head dim, in either layout:
    ``(B, N, H, D)`` -> ``(B, N, H, 2D)`` or ``(B, H, N, D)`` -> ``(B, H, N, 2D)``, a new
    contiguous tensor (so a bhnd mechanism gets q and k of this layer without a copy)."""

    def __init__(self, n_heads: int, head_dim: int, layout: str, device=None):
        super().__init__()
        width = n_heads * head_dim
        index = torch.arange(width, dtype=torch.float32, device=device)  # [C]
        theta = 10000.0 ** (-2.0 / width * index)  # [C]
        self.theta = nn.Parameter(theta.view(n_heads, head_dim))  # [H, D]
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1 if self.layout == "bnhd" else 2]
        t = torch.arange(n, device=x.device, dtype=torch.float32)  # [N]
        if self.layout == "bnhd":
            angles = t[:, None, None] * self.theta  # [N, H, D]
        else:
            angles = self.theta[:, None, :] * t[None, :, None]  # [H, N, D]
        x32 = x.float()
        out = torch.cat([x32 * angles.cos(), x32 * angles.sin()], dim=-1)  # [..., 2D]
        return out.type_as(x)


class GLA(nn.Module):
    """Gated linear attention: W_o[SRMSNorm(attn(swish(q), swish(k), v, decay)) * u]."""

    def __init__(self, config: ModelConfig, layer: int, attn_fn, layout: str, device=None):
        super().__init__()
        c, self.h, self.d = config.dim, config.n_heads, config.head_dim
        self.qkvu = nn.Linear(c, 4 * c, bias=False, device=device)
        self.out = nn.Linear(c, c, bias=False, device=device)
        self.norm = SRMSNorm(config.norm_eps)
        self.lrpe = Lrpe(self.h, self.d, layout, device) if layer < config.lrpe_layers else None
        self.register_buffer("decay", tnl_decay(self.h, layer, config.n_layers, device),
                             persistent=False)  # [H] float32
        self.attn_fn, self.layout = attn_fn, layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v, u = self.qkvu(x).chunk(4, dim=-1)  # [B, N, C] views each
        # In the mechanism's layout from here: [B, N, H, D] or [B, H, N, D].
        q = F.silu(to_native(q.view(b, n, self.h, self.d), self.layout))
        k = F.silu(to_native(k.view(b, n, self.h, self.d), self.layout))
        if self.lrpe is not None:
            q, k = self.lrpe(q), self.lrpe(k)  # head dim 2D
        v = to_native(v.view(b, n, self.h, self.d), self.layout)  # a view; E = D
        o = self.attn_fn(q, k, v, self.decay)  # [B, N, H, E] or [B, H, N, E]
        o = self.norm(from_native(o, self.layout))  # [B, N, C]
        return self.out(o * u)  # [B, N, C]


class SGLU(nn.Module):
    """Simple GLU: W_o[(X W_v) * (X W_u)], no activation."""

    def __init__(self, dim: int, hidden: int, device=None):
        super().__init__()
        self.w_v = nn.Linear(dim, hidden, bias=False, device=device)
        self.w_u = nn.Linear(dim, hidden, bias=False, device=device)
        self.w_o = nn.Linear(hidden, dim, bias=False, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_o(self.w_v(x) * self.w_u(x))  # [B, N, F] inside, [B, N, C] out


class Block(PreNormBlock):
    PARTS = ("token_norm", "token_mixer", "channel_norm", "channel_mixer")

    def __init__(self, config: ModelConfig, layer: int, attn_fn, layout: str, device=None):
        super().__init__(SRMSNorm(config.norm_eps), GLA(config, layer, attn_fn, layout, device),
                         SRMSNorm(config.norm_eps), SGLU(config.dim, config.ffn_dim, device))


class TNL(Decoder):
    """``TNL(config, mechanism, dtype_policy, device)``: see ``common.Decoder``; the output
    projection is tied to the embedding (``config.tie_embeddings``)."""

    NAMES = ("embed", "lm_head")
    block = Block  # (config, layer, attn_fn, layout, device)

    def final_norm(self, config: ModelConfig, device) -> SRMSNorm:
        return SRMSNorm(config.norm_eps)

    @staticmethod
    def matmul_params(config: ModelConfig) -> int:
        """Weights that take part in a matmul per token (all but the embedding lookup and
        LRPE's theta; the tied output projection counts, it is a matmul): the ``6 * params``
        of the FLOP count."""
        c, f = config.dim, config.ffn_dim
        per_layer = 4 * c * c + c * c + 3 * c * f
        return config.n_layers * per_layer + c * config.vocab_size
