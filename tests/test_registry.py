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
