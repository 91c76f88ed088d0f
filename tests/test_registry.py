import re

import pytest
from fakes import make_case

from attnbench import registry
from attnbench.errors import UsageError

REFERENCES = ["softmax-naive", "sdpa-math", "linear-recurrent", "linear-masked", "linear-cumsum"]


def test_names_are_unique_and_references_registered():
    names = registry.names()
    assert len(names) == len(set(names))
    for name in REFERENCES:
        assert name in names


@pytest.mark.parametrize("mech", registry.MECHANISMS, ids=lambda m: m.name)
def test_every_mechanism_is_well_formed(mech):
    assert mech.family in registry.FAMILIES
    assert mech.layout in ("bhnd", "bnhd")
    assert set(mech.dtypes) <= set(registry.DTYPES)
    assert registry.get(mech.oracle).name != mech.name, "a mechanism cannot be its own oracle"
    assert mech.flops(make_case(batch=2, heads=3, seq_len=64)) > 0
    # decode: a step over a state or a KV cache, or the reason it has none
    assert mech.decode.cache in ("", *registry.DECODE_MODELS)
    assert bool(mech.decode.cache) == (mech.decode.load is not None)
    assert mech.decode.cache or len(mech.decode.why) > 20
    assert not (mech.sequence_parallel and mech.decode.cache)
    if mech.decode.cache == "state":
        assert mech.family == "linear"


def test_get_unknown_lists_known_names():
    with pytest.raises(UsageError, match="known: .*linear-masked"):
        registry.get("nosuch")


def test_select_names_families_and_all():
    assert [m.name for m in registry.select("linear-masked,sdpa-math", "cpu")] == [
        "linear-masked", "sdpa-math"]
    linear = registry.select("linear", "cpu")
    assert {m.family for m in linear} == {"linear"} and len(linear) >= 3
    everything = registry.select(None, "cpu")
    assert all("cpu" in m.devices for m in everything)
    assert {m.name for m in everything} >= set(REFERENCES)


def test_select_unknown_is_usage_error():
    with pytest.raises(UsageError, match="unknown mechanism or family 'flash3'"):
        registry.select("linear,flash3", "cpu")


def test_availability_reasons():
    cpu_ref = registry.get("linear-masked")
    assert cpu_ref.available("cpu")
    gpu_only = registry.Mechanism(name="x", family="linear", load=lambda: None, summary="",
                                  devices=("cuda",))
    avail = gpu_only.available("cpu")
    assert not avail and "cuda" in avail.reason
    missing = registry.Mechanism(name="y", family="linear", load=lambda: None, summary="",
                                 devices=("cpu",), package="no_such_package_xyz",
                                 pip_hint="pip install 'attnbench[peers]'")
    avail = missing.available("cpu")
    assert not avail and "no_such_package_xyz not installed" in avail.reason
    assert "attnbench[peers]" in avail.reason
    probed = registry.Mechanism(name="z", family="linear", load=lambda: None, summary="",
                                devices=("cpu",), probe=lambda: "built for torch 2.10")
    assert probed.available("cpu").reason == "built for torch 2.10"


def test_unsupported_reason_for_dtype_and_head_dim():
    m = registry.Mechanism(name="m", family="softmax", load=lambda: None, summary="",
                           dtypes=("bf16",), head_dims=(16, 256), head_dim_multiple=8)
    def reason(d, dtype="bf16", e=None):
        return m.unsupported_reason(make_case(head_dim=d, value_dim=e, dtype=dtype))

    assert "does not take fp32" in reason(64, "fp32")
    assert "head dims 16..256, multiple of 8, not 100" in reason(100)
    assert "not 512" in reason(512)
    assert "value dims 16..256, multiple of 8, not 300" in reason(128, e=300)
    assert reason(128) == "" and reason(128, e=64) == ""


def test_flop_models():
    # Causal softmax, FlashAttention's convention: 4·b·h·n²·d / 2 forward.
    case = make_case(batch=2, heads=3, seq_len=8, head_dim=16)
    assert registry.quadratic_flops(case) == 4 * 2 * 3 * 8 * 8 * 16 / 2
    # With E != D each product counts its own dim: QK^T 2·n²·d/2, PV 2·n²·e/2.
    assert registry.quadratic_flops(case.with_(value_dim=32)) == 2 * 3 * 8 * 8 * (16 + 32)
    small = make_case(batch=1, heads=1, seq_len=10, head_dim=4, value_dim=8)
    assert registry.linear_state_flops(small) == 4 * 10 * 4 * 8
    assert registry.MODE_FLOP_FACTOR["bwd"] == 2.5
    assert registry.MODE_FLOP_FACTOR["fwdbwd"] == 3.5


# One small shape counted by hand: b=1, h=2, n=8, d=4, e=6, bf16 (2 bytes); 16 rows of q..o.
# FLOPs (forward): quadratic b·h·n²·(d+e) = 2·64·10 = 1280; linear state 4·b·h·n·d·e = 1536.
# Bytes: fwd q 64 + k 64 + v 96 + o 96 = 320 elements = 640 B; bwd reads q, k, v, do (320)
# and writes dq, dk, dv (224): 1088 B. Softmax kernels' bwd also read o (96 el, 192 B) and
# one fp32 logsumexp per row (64 B): 1344. An n x n matrix per head is 128 elements: +512 B
# forward (written, read), +768 B backward (read, gradient written and read). Every prefix
# state is 16 x 24 = 384 elements: +1536 B forward, +2304 B backward.
HAND_COUNTS = {  # name: (fwd FLOPs, fwd bytes, bwd bytes)
    "lightning2": (1536, 640, 1088),
    "lightning1": (1280, 640, 1088),
    "peer-lightning-attn": (1536, 640, 1088),
    "peer-fla-chunk": (1536, 640, 1088),
    "linear-recurrent": (1536, 2176, 3392),
    "linear-masked": (1280, 1152, 1856),
    "linear-cumsum": (1536, 2176, 3392),
    "softmax-naive": (1280, 1152, 1856),
    "sdpa-math": (1280, 1152, 1856),
    "flash2": (1280, 640, 1344),
    "sdpa-flash": (1280, 640, 1344),
    "sdpa-cudnn": (1280, 640, 1344),
    "sdpa-efficient": (1280, 640, 1344),
    "xformers": (1280, 640, 1344),
    # sequence-parallel: the whole case's work and bytes, all ranks together
    "lightning2-sp": (1536, 640, 1088),
    "sdpa-ring": (1280, 640, 1344),
}


def test_every_mechanism_has_a_hand_count():
    assert set(HAND_COUNTS) == set(registry.names())


@pytest.mark.parametrize("name", sorted(HAND_COUNTS))
def test_flop_and_byte_models_match_a_count_by_hand(name):
    mech, (flops, fwd_bytes, bwd_bytes) = registry.get(name), HAND_COUNTS[name]
    case = make_case(name, batch=1, heads=2, seq_len=8, head_dim=4, value_dim=6, dtype="bf16")
    assert mech.flops(case) == flops
    assert mech.mode_flops(case.with_(mode="bwd")) == 2.5 * flops
    assert mech.traffic(case) == fwd_bytes
    assert mech.traffic(case.with_(mode="bwd")) == bwd_bytes
    assert mech.traffic(case.with_(mode="fwdbwd")) == fwd_bytes + bwd_bytes
    assert mech.traffic(case.with_(dtype="fp32")) == 2 * fwd_bytes


def test_lightning2_records_say_whether_the_sequence_was_split():
    """impl names the plan the kernel takes for the case (here: the interpreter's nominal
    132 SMs): whole where B * H fills the GPU, segments at batch 1 and 8 heads."""
    mech = registry.get("lightning2")
    paper = make_case("lightning2", batch=4, heads=32, seq_len=32768, head_dim=128,
                      value_dim=128, dtype="bf16")
    assert mech.impl_of(paper) == "lightning_attn2: whole-sequence scans"
    small = paper.with_(batch=1, heads=8)
    assert re.fullmatch(r"lightning_attn2: \d+ segments of \d+ tokens per sequence",
                        mech.impl_of(small))
