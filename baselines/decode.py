"""Decode steps: one new token per sequence against the context already processed.

A step is ``step(q, k, v, cache, decay) -> o``: q, k, v of one token in the mechanism's
layout ((B, H, 1, D) for ``bhnd``, (B, 1, H, D) for ``bnhd``), o of one token in the same
layout, and ``cache`` a list the step reads and updates:

- a state ``[state]``: float32 (B, H, D, E), the same size at any context length; the step
  advances it by the token, in place (or by putting the state it returns into the list:
  no copy either way).
- a KV cache ``[k_cache, v_cache]``: the context's N keys and values in the layout, with
  one slot more (N + 1 along the sequence axis). The step writes the new token's key and
  value into the last slot, N, and attends over all N + 1. Called again, it overwrites the
  same slot: the cache never grows or moves, so every timed call does the same work.

Softmax steps scale by 1/sqrt(D) and have no mask: the one query sees its whole context.
Linear steps follow ``attnbench.baselines.linear``: no softmax, no scale, per-head decay.
"""

from __future__ import annotations

import importlib
import math

import torch
from attnbench.baselines.linear import linear_decode
from attnbench.baselines.softmax import _flash_attn, _no_decay, sdpa_backend_fn

SEQ_AXIS = {"bhnd": 2, "bnhd": 1}


def state_step(fn):
    """The step of ``fn(q, k, v, state, decay) -> o``, which advances ``state`` in place."""
    def step(q, k, v, cache, decay=None):
        return fn(q, k, v, cache[0], decay)
    return step


def load_lightning2():
    """Our Triton step, ``lightning_attn2_decode``."""
    from attnbench.kernels import lightning_attn2_decode

    return state_step(lightning_attn2_decode)


def load_linear_recurrent():
    """The recurrence's step in PyTorch (float64 inputs and state: the oracle)."""
    return state_step(linear_decode)


def kv_step(attend, layout: str = "bhnd"):
    """The step of ``attend(q, k_cache, v_cache) -> o`` over a KV cache of N + 1 slots: the
    new key and value copied into slot N (one token each), then attention over all slots."""
    axis = SEQ_AXIS[layout]

    def step(q, k, v, cache, decay=None):
        _no_decay(decay)
        k_cache, v_cache = cache
        last = k_cache.shape[axis] - 1
        k_cache.narrow(axis, last, 1).copy_(k)
        v_cache.narrow(axis, last, 1).copy_(v)
        return attend(q, k_cache, v_cache)

    return step


def naive_attend(q, k, v):
    """softmax(q K^T / sqrt(D)) V with the scores materialised, (B, H, *, D) layout."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def load_softmax_naive():
    """Plain PyTorch over the KV cache (float64: the oracle)."""
    return kv_step(naive_attend)


def load_sdpa(backend_name: str):
    """SDPA pinned to one backend over the KV cache, no mask (``is_causal=False``); a backend
    that refuses raises ``NotImplementedError`` with PyTorch's reasons."""
    sdpa = sdpa_backend_fn(backend_name, causal=False)
    return kv_step(lambda q, k, v: sdpa(q, k, v))


def flash2_kvcache_problem() -> str:
    """Why flash-attn's KV-cache path cannot run here ("" if it can)."""
    module, why_not = _flash_attn()
    if module is None:
        return (f"{why_not}: FlashAttention's KV-cache path (flash_attn_with_kvcache) needs "
                "the package (pip install 'attnbench[flash]'); sdpa-flash decodes with "
                "PyTorch's FlashAttention kernel")
    if not hasattr(module, "flash_attn_with_kvcache"):
        return (f"flash-attn {getattr(module, '__version__', '?')} has no "
                "flash_attn_with_kvcache")
    return ""


def flash2_kvcache_impl() -> str:
    module = importlib.import_module("flash_attn")
    return f"flash-attn {getattr(module, '__version__', '?')} flash_attn_with_kvcache"


def load_flash2_kvcache():
    """flash-attn's ``flash_attn_with_kvcache`` in (B, N, H, D): the new key and value are
    written into slot N by the kernel itself (``cache_seqlens`` = N for every sequence)."""
    problem = flash2_kvcache_problem()
    if problem:
        raise NotImplementedError(problem)
    from flash_attn import flash_attn_with_kvcache

    lengths: dict = {}  # (batch, N, device) -> the int32 cache_seqlens tensor, made once

    def step(q, k, v, cache, decay=None):
        _no_decay(decay)
        k_cache, v_cache = cache
        key = (k_cache.shape[0], k_cache.shape[1] - 1, k_cache.device)
        if key not in lengths:
            lengths[key] = torch.full((key[0],), key[1], dtype=torch.int32, device=key[2])
        return flash_attn_with_kvcache(q, k_cache, v_cache, k=k, v=v,
                                       cache_seqlens=lengths[key], causal=False)

    return step
