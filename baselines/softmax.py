"""Softmax attention references: the materialised form and PyTorch SDPA pinned to one backend.

Layout ``(B, H, N, D)`` (v may have its own head dim E), causal, scale ``1/sqrt(D)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def softmax_naive(q, k, v, decay=None):
    """Causal softmax attention with the n x n score matrix materialised: O(n^2) memory."""
    if decay is not None:
        raise ValueError("softmax attention takes no decay")
    n = q.shape[-2]
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # [B, H, N, N]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, H, N, E]


def sdpa_backend_fn(backend_name: str):
    """``F.scaled_dot_product_attention`` restricted to one backend, so nothing falls back.

    ``backend_name`` is a member of ``torch.nn.attention.SDPBackend`` ("MATH",
    "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"). A backend that refuses the
    inputs raises PyTorch's own RuntimeError, which names the reason.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def sdpa(q, k, v, decay=None):
        if decay is not None:
            raise ValueError("softmax attention takes no decay")
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    sdpa.__name__ = f"sdpa_{backend_name.lower()}"
    return sdpa
