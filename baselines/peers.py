"""Public Lightning Attention-2 implementations we measure ourselves against.

- ``lightning-attn`` 0.0.5 (the official package, OpenNLPLab): ``lightning_attn_func(q, k, v,
  s)``, our layout ``(B, H, N, D)`` and our decay convention (s = per-head rates).
- ``fla-core`` (flash-linear-attention): ``chunk_simple_gla`` with a head-wise constant decay,
  ``g_gamma = -s`` (a natural log decay per step) and ``scale = 1.0``, layout ``(B, N, H, D)``;
  its decode step is ``fused_recurrent_simple_gla`` on one token (FLA's recurrent kernel, what
  its own layers run for short inputs), the state (B, H, D, E) float32 in and out.
"""

from __future__ import annotations


def load_lightning_attn():
    from lightning_attn.ops import lightning_attn_func

    def peer_lightning_attn(q, k, v, decay=None):
        return lightning_attn_func(q, k, v, decay)

    return peer_lightning_attn


def lightning_attn_limits(n: int, d: int, dtype: str, decay: bool) -> str:
    """Cases lightning-attn 0.0.5 cannot take, as its own code decides them."""
    if 16 % d == 0:
        return f"lightning-attn 0.0.5 asserts on head dims that divide 16 (got {d})"
    if not decay and d <= 128:
        return ("lightning-attn 0.0.5's no-decay path raises NameError (q1 undefined) for "
                "head dims <= 128")
    return ""


def load_fla_chunk():
    from fla.ops.simple_gla import chunk_simple_gla

    last = {}  # decay tensor -> g_gamma, so the negation runs once per input, not per call

    def peer_fla_chunk(q, k, v, decay=None):
        g_gamma = None
        if decay is not None:
            if last.get("decay") is not decay:
                last.update(decay=decay, g_gamma=-decay)
            g_gamma = last["g_gamma"]
        o, _ = chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=1.0)
        return o

    return peer_fla_chunk


def load_fla_decode():
    """FLA's decode step (``attnbench.baselines.decode``'s state convention): the token
    (B, 1, H, D) through ``fused_recurrent_simple_gla`` from the cached state; FLA returns
    the next state as a new tensor, which replaces the old one in the cache (no copy)."""
    from fla.ops.simple_gla import fused_recurrent_simple_gla

    last = {}

    def peer_fla_decode(q, k, v, cache, decay=None):
        g_gamma = None
        if decay is not None:
            if last.get("decay") is not decay:
                last.update(decay=decay, g_gamma=-decay)
            g_gamma = last["g_gamma"]
        o, cache[0] = fused_recurrent_simple_gla(q, k, v, g_gamma=g_gamma, scale=1.0,
                                                 initial_state=cache[0],
                                                 output_final_state=True)
        return o

    return peer_fla_decode
