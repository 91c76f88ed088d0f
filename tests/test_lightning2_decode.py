"""Tests for kernels/lightning2_decode.py against the float64 recurrence (baselines/linear.py).

The decode step has no tl.dot, so every dtype (bf16 too) runs in Triton's interpreter on the
CPU; the GPU tests add large shapes and the direct-launch path.
"""

import pytest
import torch
from attnbench.baselines.linear import linear_decode
from attnbench.kernels import default_decay, lightning_attn2, lightning_attn2_decode
from attnbench.kernels import lightning2_decode as module
from conftest import KERNEL_DEVICE
from kernel_testing import DTYPES, FLOOR, rel_err

CASES = [
    # B, H, D, E, dtype, decay
    (2, 3, 32, 32, "fp32", True),
    (2, 3, 32, 32, "fp32", False),
    (1, 2, 48, 80, "fp16", True),
    (3, 1, 64, 16, "bf16", True),
    (1, 2, 16, 256, "bf16", False),
    (1, 1, 256, 48, "fp32", True),
]
STEPS = 3


def _id(c):
    b, h, d, e, dt, dec = c
    return f"B{b}-H{h}-D{d}-E{e}-{dt}-{'decay' if dec else 'nodecay'}"


def _tokens(b, h, n, d, e, dtype, device, seed=0):
    """Seeded q, k (B, H, N, D) and v (B, H, N, E), made in fp32 then cast (never zeros)."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, n, d, generator=g) for _ in range(2))
    v = torch.randn(b, h, n, e, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)]


def _state(b, h, d, e, device, seed=1, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(b, h, d, e, generator=g)).to(device)


def _decay(with_decay, h, device):
    return default_decay(h, device) if with_decay else None


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_steps_match_the_float64_recurrence(case):
    """STEPS tokens from a random state: every output and the state after each step, by the
    2x rule against plain PyTorch (the same step, inputs in the dtype, state in fp32)."""
    b, h, d, e, dt, dec = case
    dtype, device = DTYPES[dt], KERNEL_DEVICE
    q, k, v = _tokens(b, h, STEPS, d, e, dtype, device)
    decay = _decay(dec, h, device)
    state = _state(b, h, d, e, device)
    base_state, exact = state.clone(), state.double().cpu()
    dec64 = None if decay is None else decay.double().cpu()
    for t in range(STEPS):
        tok = [x[:, :, t : t + 1] for x in (q, k, v)]
        o = lightning_attn2_decode(*tok, state, decay)
        base = linear_decode(*tok, base_state, decay)
        ref = linear_decode(*(x.double().cpu() for x in tok), exact, dec64)
        assert o.shape == (b, h, 1, e) and o.dtype == dtype
        assert torch.isfinite(o).all(), "unwritten output (NaN-poisoned empty)"
        for name, got, bl, want in (("o", o, base, ref), ("state", state, base_state, exact)):
            err, base_err = rel_err(got, want), rel_err(bl, want)
            bound = 2 * base_err + FLOOR[dtype if name == "o" else torch.float32]
            assert err <= bound, f"step {t} {name}: {err:.2e} > {bound:.2e} (torch {base_err:.2e})"


@pytest.mark.parametrize("dt", ["fp32", "fp16"])
@pytest.mark.parametrize("with_decay", [True, False], ids=["decay", "nodecay"])
def test_prefill_state_continues_in_decode(dt, with_decay):
    """lightning_attn2 over a prefix, then decode steps == lightning_attn2 over the whole."""
    b, h, n, p, d, e = 2, 2, 21, 17, 32, 48
    dtype, device = DTYPES[dt], KERNEL_DEVICE
    q, k, v = _tokens(b, h, n, d, e, dtype, device, seed=3)
    decay = _decay(with_decay, h, device)
    whole, final = lightning_attn2(q, k, v, decay, output_final_state=True)
    _, state = lightning_attn2(q[:, :, :p], k[:, :, :p], v[:, :, :p], decay,
                               output_final_state=True)
    outs = [lightning_attn2_decode(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1],
                                   state, decay) for t in range(p, n)]
    # lightning_attn2 rounds the state (and the decayed values) to the input dtype for its
    # products; the step does not: half inputs agree to their rounding
    tol = 1e-5 if dtype == torch.float32 else 4e-3
    assert rel_err(torch.cat(outs, dim=2), whole[:, :, p:]) < tol
    assert rel_err(state, final) < tol / 4


@pytest.mark.parametrize("with_decay", [True, False], ids=["decay", "nodecay"])
def test_decode_state_continues_in_prefill(with_decay):
    """Decode steps from a state, then lightning_attn2 from the decode's state (initial_state)
    == lightning_attn2 over the whole from the first state."""
    b, h, n, p, d, e = 1, 3, 19, 4, 48, 32
    device = KERNEL_DEVICE
    q, k, v = _tokens(b, h, n, d, e, torch.float32, device, seed=5)
    decay = _decay(with_decay, h, device)
    s0 = _state(b, h, d, e, device)
    whole, final = lightning_attn2(q, k, v, decay, initial_state=s0, output_final_state=True)
    state = s0.clone()
    head = [lightning_attn2_decode(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1],
                                   state, decay) for t in range(p)]
    rest, last = lightning_attn2(q[:, :, p:], k[:, :, p:], v[:, :, p:], decay,
                                 initial_state=state, output_final_state=True)
    assert rel_err(torch.cat([*head, rest], dim=2), whole) < 1e-5
    assert rel_err(last, final) < 1e-5


def test_state_is_updated_in_place_and_nothing_else_is():
    b, h, d, e = 1, 2, 16, 16
    q, k, v = _tokens(b, h, 1, d, e, torch.float32, KERNEL_DEVICE)
    state = _state(b, h, d, e, KERNEL_DEVICE)
    before, ptr = state.clone(), state.data_ptr()
    kept = [x.clone() for x in (q, k, v)]
    lightning_attn2_decode(q, k, v, state)
    assert state.data_ptr() == ptr
    assert torch.allclose(state, before + k[:, :, 0, :, None] * v[:, :, 0, None, :], atol=1e-5)
    assert all(torch.equal(x, y) for x, y in zip((q, k, v), kept))


def test_model_layout_is_read_in_place():
    """(B, 1, H, X) tensors seen as (B, H, 1, X) (a model's projections) give what contiguous
    ones give; o comes back in v's layout."""
    b, h, d, e = 2, 3, 32, 16
    q, k, v = _tokens(b, h, 1, d, e, torch.float16, KERNEL_DEVICE, seed=7)
    decay = default_decay(h, KERNEL_DEVICE)
    s1, s2 = _state(b, h, d, e, KERNEL_DEVICE), _state(b, h, d, e, KERNEL_DEVICE)
    want = lightning_attn2_decode(q, k, v, s1, decay)
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    got = lightning_attn2_decode(qt, kt, vt, s2, decay)
    assert got.stride() == vt.stride()
    assert torch.equal(got, want) and torch.equal(s1, s2)


def test_slices_fill_the_gpu_at_small_batch():
    """Narrower E-slices where B x H is small (batch 1: 16 columns), 64 where it fills."""
    small = module._decode_config(1, 8, 128, 128, 132, None)
    full = module._decode_config(32, 32, 128, 128, 132, None)
    assert small["BLOCK_E"] == 16 and small["NUM_E"] == 8
    assert full["BLOCK_E"] == 64 and full["BLOCK_D"] * full["BLOCK_E"] == module.TILE
    assert module._decode_config(1, 8, 128, 128, 132, {"BLOCK_E": 32})["NUM_E"] == 4


@pytest.mark.parametrize("name", ["two tokens", "state dtype", "state shape", "state strided",
                                  "mixed dtypes", "decay shape", "head dim"])
def test_value_errors(name):
    dev = KERNEL_DEVICE
    q, k, v = _tokens(1, 2, 2, 16, 16, torch.float32, dev)
    one = [x[:, :, :1] for x in (q, k, v)]
    state = _state(1, 2, 16, 16, dev)
    args = {
        "two tokens": (q, k, v, state, None),
        "state dtype": (*one, state.double(), None),
        "state shape": (*one, state[:, :1], None),
        "state strided": (*one, state.transpose(-1, -2), None),
        "mixed dtypes": (one[0].half(), *one[1:], state, None),
        "decay shape": (*one, state, torch.ones(3, device=dev)),
        "head dim": (*_tokens(1, 2, 1, 8, 8, torch.float32, dev), _state(1, 2, 8, 8, dev), None),
    }[name]
    with pytest.raises(ValueError):
        lightning_attn2_decode(*args)


def test_negative_decay_rejected_on_cpu():
    q, k, v = _tokens(1, 2, 1, 16, 16, torch.float32, "cpu")
    if KERNEL_DEVICE != "cpu":
        pytest.skip("the sign is checked on CPU tensors only")
    with pytest.raises(ValueError, match=">= 0"):
        lightning_attn2_decode(q, k, v, _state(1, 2, 16, 16, "cpu"), -torch.ones(2))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(32, 32, 128, 128), (1, 8, 128, 128), (4, 4, 96, 192)],
                         ids=lambda s: "B{}-H{}-D{}-E{}".format(*s))
def test_bf16_serving_shapes_against_float64(shape):
    """The shapes the decode sweep times, bf16, on the GPU (compiled, direct launches)."""
    b, h, d, e = shape
    q, k, v = _tokens(b, h, 4, d, e, torch.bfloat16, "cuda", seed=11)
    decay = default_decay(h, "cuda")
    state = _state(b, h, d, e, "cuda")
    exact = state.double().cpu()
    for t in range(4):  # the first call compiles, the others take the direct launch
        tok = [x[:, :, t : t + 1] for x in (q, k, v)]
        o = lightning_attn2_decode(*tok, state, decay)
        ref = linear_decode(*(x.double().cpu() for x in tok), exact, decay.double().cpu())
        assert rel_err(o, ref) < 8e-3 and rel_err(state, exact) < 1e-6
    assert module._DECODE.fast >= 1


def test_a_call_seen_before_still_refuses_other_inputs():
    """The launch cache is keyed by every input's shape, dtype and device: a key of another
    dtype or shape after a good call is still refused."""
    q, k, v = _tokens(1, 2, 1, 16, 16, torch.float32, KERNEL_DEVICE)
    state = _state(1, 2, 16, 16, KERNEL_DEVICE)
    lightning_attn2_decode(q, k, v, state)
    with pytest.raises(ValueError, match="one dtype"):
        lightning_attn2_decode(q, k.half(), v, state)
    with pytest.raises(ValueError, match="one token"):
        lightning_attn2_decode(q, torch.cat([k, k], dim=1), v, state)
