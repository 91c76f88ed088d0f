"""attnbench/modes.py's decode mode: one token per sequence against a context of seq_len
(its cache made before timing, its models, limits and check against the float64 step)."""

import math

import pytest
import torch
from attnbench.baselines.decode import kv_step, naive_attend, state_step
from attnbench.baselines.linear import linear_decode
from conftest import KERNEL_DEVICE
from fakes import fake, make_case

from attnbench import modes, records, registry
from attnbench.prepare import prepare_call, unsupported_reason

DECODE = modes.DECODE


def case(mech="linear-recurrent", **kw):
    values = dict(batch=2, heads=3, seq_len=64, head_dim=16)
    values.update(kw)
    return make_case(mech, "decode", **values)


def test_decode_is_a_run_mode_records_read():
    assert modes.get("decode") is DECODE and DECODE in modes.RUN_MODES
    assert [m.name for m in modes.RUN_MODES] == list(registry.MODES)  # run --modes
    assert set(records.CASE_MODES) == set(modes.MODES)  # every mode's records read back
    assert DECODE.figures == ("decode",) and not DECODE.grads


def test_tokens_are_one_per_sequence_and_rates_follow():
    mech = registry.get("linear-recurrent")
    prepared = prepare_call(mech, case(batch=4, seq_len=512), "cpu")
    assert prepared.tokens == 4  # not batch x context
    rates = prepared.rates(0.002)
    assert rates["tokens_per_s"] == pytest.approx(2000.0)
    assert rates["gbps"] == pytest.approx(registry.state_decode_traffic(prepared.case) / 2e6)
    assert rates["cache_mib"] == pytest.approx(4 * 3 * 16 * 16 * 4 / 2**20)
    assert math.isnan(prepare_call(mech, case().with_(mode="fwd"), "cpu")
                      .rates(1.0)["cache_mib"])  # an operator call keeps no context


def test_models_by_cache_kind():
    c = case(batch=2, heads=3, seq_len=100, head_dim=16, value_dim=32, dtype="bf16")
    lin, soft = registry.get("lightning2"), registry.get("sdpa-flash")
    state = 4.0 * 2 * 3 * 16 * 32
    token = 2 * 2 * 3 * (2 * 16 + 2 * 32)
    assert DECODE.bytes(lin, c) == 2 * state + token  # state read and written, the token
    assert DECODE.flops(lin, c) == 4 * 2 * 3 * 16 * 32
    assert DECODE.memory_floor(lin, c) == state + token
    cache = 2 * 2 * 3 * 101 * (16 + 32)  # keys and values of N + 1 tokens, bf16
    assert DECODE.bytes(soft, c) == cache + 2 * 2 * 3 * (16 + 32) + token
    assert DECODE.flops(soft, c) == 2 * 2 * 3 * 101 * (16 + 32)
    assert DECODE.bytes(lin, c.with_(seq_len=1 << 20)) == DECODE.bytes(lin, c)  # flat in N
    assert math.isnan(DECODE.bytes(registry.get("lightning1"), c))


@pytest.mark.parametrize("name", [m.name for m in registry.MECHANISMS if not m.decode.cache])
def test_a_mechanism_that_cannot_decode_says_why(name):
    mech = registry.get(name)
    reason = unsupported_reason(mech, case(name))
    assert reason.startswith(f"{name} cannot decode: ") and len(reason) > len(name) + 30


def test_limits_of_the_forward_call_apply():
    flash = registry.get("sdpa-flash")
    assert "does not take fp32" in DECODE.unsupported_reason(flash, case("sdpa-flash"))
    assert DECODE.unsupported_reason(flash, case("sdpa-flash", dtype="bf16")) == ""
    lightning = registry.get("lightning2")
    assert "head dims 16..256" in DECODE.unsupported_reason(lightning, case(head_dim=8))


def test_state_cache_is_random_at_the_scale_of_its_context_and_does_not_grow():
    mech = registry.get("linear-recurrent")
    short = prepare_call(mech, case(seq_len=16, decay=False), "cpu")
    long = prepare_call(mech, case(seq_len=4096, decay=False), "cpu")
    assert short.cache_bytes == long.cache_bytes == 2 * 3 * 16 * 16 * 4
    decayed = prepare_call(mech, case(seq_len=1 << 20), "cpu")  # decay bounds the scale
    assert decayed.cache_bytes == short.cache_bytes
    o = long.call()
    assert o.shape == (2, 3, 1, 16) and torch.isfinite(o).all()
    # std of a sum of N unit k^T v terms: sqrt(N) (64 at 4096), never zeros
    assert 40 < float(o.abs().mean()) / 4 < 200


def test_kv_cache_holds_n_plus_one_slots_in_the_layout_and_a_step_writes_slot_n():
    mech = registry.get("sdpa-math")
    c = case("sdpa-math", seq_len=50, decay=False)
    prepared = prepare_call(mech, c, "cpu")
    assert prepared.cache_bytes == 2 * (2 * 3 * 51 * 16 * 4)
    first = prepared.call()
    assert first.shape == (2, 3, 1, 16) and torch.equal(first, prepared.call())
    flash = registry.get("flash2")  # (B, N, H, D): the cache is made in its layout
    cache = modes.context_cache(flash, c.with_(mechanism="flash2", dtype="bf16"), "cpu", None, 0)
    assert [x.shape for x in cache] == [(2, 51, 3, 16)] * 2 and cache[0].dtype == torch.bfloat16


def test_the_check_passes_the_references_and_fails_wrong_steps(install):
    """The check compares every step and the final state with the float64 oracle: a step that
    forgets the decay, or a KV step that never writes the new key, fails it."""
    forgets = fake("forgets-decay", None, decode=registry.Decode(
        "state", lambda: state_step(lambda q, k, v, s, decay: linear_decode(q, k, v, s))))
    stale = fake("stale-slot", None, family="softmax", decay=False, decode=registry.Decode(
        "kv", lambda: lambda q, k, v, cache, decay=None: naive_attend(q, *cache)))
    right = fake("right-kv", None, family="softmax", decay=False, decode=registry.Decode(
        "kv", lambda: kv_step(naive_attend)))
    install(forgets, stale, right)
    for name, passes in (("linear-recurrent", True), ("softmax-naive", True),
                         ("right-kv", True), ("forgets-decay", False), ("stale-slot", False)):
        mech = registry.get(name)
        c = DECODE.check_case(case(name, decay=mech.decay))
        assert (c.mode, c.seq_len, c.batch) == ("decode", modes.DECODE_CHECK_CONTEXT, 2)
        result = DECODE.check(mech, c, "cpu")
        assert result.passed == passes, (name, result)


def test_lightning2_decodes_through_the_mode_in_the_interpreter():
    """Our kernel's step made by the mode (cache, layout, decay) and checked as a run checks
    it: on the CPU through Triton's interpreter (the sweep runs it on CUDA only)."""
    mech = registry.get("lightning2")
    c = case("lightning2", batch=1, heads=2, head_dim=16, value_dim=32)
    prepared = prepare_call(mech, c, KERNEL_DEVICE)
    assert prepared.call().shape == (1, 2, 1, 32)
    assert DECODE.impl(mech, c).startswith("lightning_attn2_decode")
    assert DECODE.check(mech, DECODE.check_case(c), KERNEL_DEVICE).passed


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["lightning2", "sdpa-flash"])
def test_gpu_a_step_copies_no_cache(name):
    """A timed step allocates about its output (and a state for FLA-like steps), never a copy
    of the cache: batch 8, heads 32, a context of 32k."""
    mech = registry.get(name)
    c = case(name, batch=8, heads=32, seq_len=1 << 15, head_dim=128, dtype="bf16",
             decay=mech.decay)
    prepared = prepare_call(mech, c, "cuda")
    prepared.call()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        prepared.call()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < 0.05 * prepared.cache_bytes, (extra, prepared.cache_bytes)


# cuDNN last: a backend that fails hard must not take the others' CUDA context with it
GPU_DECODERS = ["lightning2", "peer-fla-chunk", "sdpa-flash", "sdpa-efficient", "sdpa-math",
                "softmax-naive", "linear-recurrent", "flash2", "sdpa-cudnn"]


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_DECODERS)
def test_gpu_decoders_pass_the_check_or_say_why(name):
    """On the GPU, bf16, batch 8, heads 4, D 128: each decoder passes the float64 check, or is
    unsupported with a reason (not installed, a backend that refuses one query)."""
    mech = registry.get(name)
    c = case(name, batch=8, heads=4, head_dim=128, dtype="bf16", decay=mech.decay)
    why = mech.available("cuda").reason if not mech.available("cuda") else (
        unsupported_reason(mech, c))
    if why:
        pytest.skip(why)
    try:
        result = DECODE.check(mech, DECODE.check_case(c), "cuda")
    except NotImplementedError as exc:  # the sweep records this as unsupported
        pytest.skip(str(exc))
    assert result.passed, result
