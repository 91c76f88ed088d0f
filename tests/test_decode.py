"""baselines/decode.py and the peer's decode (baselines/peers.py): one-token steps over a
state or a KV cache, against independent whole-sequence references."""

import math
import sys
import types

import pytest
import torch
from attnbench.baselines import decode, peers
from attnbench.baselines.linear import linear_decode, linear_state
from attnbench.baselines.softmax import softmax_naive
from attnbench.kernels import default_decay


def _qkv(b, h, n, d, e, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, x, generator=g, dtype=dtype) for x in (d, d, e)]


def _kv_cache(k, v, n, layout):
    """Keys and values of tokens 0..n-1 in ``layout`` with one slot more, the last NaN."""
    cache = []
    for x in (k, v):
        part = x[:, :, : n + 1].clone()
        part[:, :, n] = float("nan")
        cache.append(part if layout == "bhnd" else part.transpose(1, 2).contiguous())
    return cache


@pytest.mark.parametrize("n", [1, 9, 40])
def test_softmax_step_is_the_last_row_of_causal_softmax(n):
    """One query against N cached keys plus its own = row N of causal softmax over N + 1."""
    q, k, v = _qkv(2, 3, n + 1, 16, 24)
    cache = _kv_cache(k, v, n, "bhnd")
    o = decode.load_softmax_naive()(q[:, :, n:], k[:, :, n:], v[:, :, n:], cache)
    want = softmax_naive(q, k, v)[:, :, n:]
    assert torch.allclose(o, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(cache[0][:, :, n], k[:, :, n])  # the new key is in slot N


def test_sdpa_step_matches_the_float64_oracle_and_calls_repeat_the_same_work():
    """SDPA (its math backend, the CPU's) with no mask against the float64 softmax step; a
    second call overwrites the same slot: same output, same cache, nothing grows."""
    n = 33
    q, k, v = _qkv(1, 2, n + 1, 32, 32)
    step = decode.load_sdpa("MATH")
    cache = _kv_cache(*(x.float() for x in (k, v)), n, "bhnd")
    token = [x[:, :, n:].float() for x in (q, k, v)]
    first = step(*token, cache)
    ptrs = [c.data_ptr() for c in cache]
    again = step(*token, cache)
    ref = decode.load_softmax_naive()(*(x[:, :, n:] for x in (q, k, v)), _kv_cache(k, v, n,
                                                                                    "bhnd"))
    assert (first - ref).norm() / ref.norm() < 1e-6
    assert torch.equal(first, again)
    assert [c.data_ptr() for c in cache] == ptrs and cache[0].shape[2] == n + 1


def test_kv_step_writes_the_sequence_axis_of_its_layout():
    n = 5
    q, k, v = _qkv(2, 3, n + 1, 8, 8)
    cache = _kv_cache(k, v, n, "bnhd")  # (B, N + 1, H, D)

    def attend(q, kc, vc):  # the naive step in (B, N, H, D)
        return decode.naive_attend(q.transpose(1, 2), kc.transpose(1, 2),
                                   vc.transpose(1, 2)).transpose(1, 2)

    token = [x[:, :, n:].transpose(1, 2) for x in (q, k, v)]  # (B, 1, H, D)
    o = decode.kv_step(attend, "bnhd")(*token, cache)
    assert torch.allclose(o.transpose(1, 2), softmax_naive(q, k, v)[:, :, n:], atol=1e-12)
    with pytest.raises(ValueError, match="no decay"):
        decode.kv_step(attend, "bnhd")(*token, cache, torch.ones(3))


@pytest.mark.parametrize("with_decay", [True, False], ids=["decay", "nodecay"])
def test_state_steps_continue_the_masked_form(with_decay):
    """linear_state of a prefix (the masked form), then the recurrence's steps == linear_state
    of the whole: the state convention every state step shares."""
    n, p = 12, 7
    q, k, v = _qkv(2, 2, n, 8, 12, seed=3)
    decay = default_decay(2).double() if with_decay else None
    whole, final = linear_state(q, k, v, decay)
    _, state = linear_state(q[:, :, :p], k[:, :, :p], v[:, :, :p], decay)
    step = decode.load_linear_recurrent()
    cache = [state.clone()]
    outs = [step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], cache, decay)
            for t in range(p, n)]
    assert torch.allclose(torch.cat(outs, dim=2), whole[:, :, p:], atol=1e-10)
    assert torch.allclose(cache[0], final, atol=1e-10)


def test_flash_kvcache_says_why_not_without_flash_attn():
    try:
        import flash_attn  # noqa: F401
        pytest.skip("flash-attn is installed here")
    except ImportError:
        pass
    problem = decode.flash2_kvcache_problem()
    assert "flash-attn not installed" in problem and "flash_attn_with_kvcache" in problem
    with pytest.raises(NotImplementedError, match="flash_attn_with_kvcache"):
        decode.load_flash2_kvcache()


def test_fla_decode_wrapper_passes_log_decay_and_keeps_the_returned_state(monkeypatch):
    """FLA's fused_recurrent_simple_gla replaced by a fake that follows its documented
    semantics ((B, T, H, K) tokens, g_gamma a log decay, scale, a new state returned): the
    wrapper gives the recurrence's step and puts the new state in the cache, no copy."""
    calls = []

    def fused_recurrent_simple_gla(q, k, v, g_gamma=None, scale=None, initial_state=None,
                                   output_final_state=False):
        calls.append(dict(g_gamma=g_gamma, scale=scale))
        lam = torch.exp(g_gamma).view(1, -1, 1, 1)
        state = initial_state * lam + k[:, 0, :, :, None] * v[:, 0, :, None, :]
        o = scale * torch.einsum("bhd,bhde->bhe", q[:, 0], state)
        return o.unsqueeze(1), state

    fake = types.ModuleType("fla.ops.simple_gla")
    fake.fused_recurrent_simple_gla = fused_recurrent_simple_gla
    for name in ("fla", "fla.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "fla.ops.simple_gla", fake)
    step = peers.load_fla_decode()
    q, k, v = _qkv(2, 3, 1, 8, 8, seed=4)
    decay = default_decay(3).double()
    s0 = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    cache, ref_state = [s0.clone()], s0.clone()
    o = step(*(x.transpose(1, 2) for x in (q, k, v)), cache, decay)
    want = linear_decode(q, k, v, ref_state, decay)
    assert torch.allclose(o.transpose(1, 2), want, atol=1e-12)
    assert torch.allclose(cache[0], ref_state, atol=1e-12)
    assert calls[0]["scale"] == 1.0 and torch.equal(calls[0]["g_gamma"], -decay)


def test_naive_attend_scales_by_root_d():
    q = torch.ones(1, 1, 1, 4, dtype=torch.float64)
    k = torch.tensor([[[[0.0] * 4, [1.0] * 4]]], dtype=torch.float64)
    v = torch.tensor([[[[0.0], [1.0]]]], dtype=torch.float64)
    w = math.exp(4 / 2) / (1 + math.exp(4 / 2))  # scores 0 and 4 / sqrt(4)
    assert decode.naive_attend(q, k, v).item() == pytest.approx(w)
