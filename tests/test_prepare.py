import pytest
import torch
from fakes import make_case

from attnbench import registry
from attnbench.prepare import prepare_call


@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwdbwd"])
def test_each_mode_is_one_call_on_inputs_made_before(mode):
    mech = registry.get("linear-masked")
    case = make_case(mode=mode, batch=1, heads=2, seq_len=32, head_dim=8, value_dim=12)
    prepared = prepare_call(mech, case, "cpu")
    q, k, v = prepared.inputs
    assert q.shape == (1, 2, 32, 8) and v.shape == (1, 2, 32, 12)
    assert q.requires_grad == (mode != "fwd")
    out = prepared.call()
    if mode == "fwd":
        assert out.shape == (1, 2, 32, 12)
    else:
        assert v.grad is not None and v.grad.shape == v.shape
        first = v.grad.clone()
        prepared.call()  # a second call replaces the gradients, never adds to them
        torch.testing.assert_close(v.grad, first)
    assert prepared.flops == registry.MODE_FLOP_FACTOR[mode] * mech.flops(case)


def test_native_layout_inputs_are_made_in_it():
    mech = registry.get("linear-masked")
    bnhd = registry.Mechanism(name="x", family="linear", load=lambda: None, summary="",
                              layout="bnhd")
    prepared = prepare_call(bnhd, make_case(batch=1, heads=2, seq_len=16, head_dim=4),
                            "cpu", fn=lambda q, k, v, d: v)
    assert prepared.inputs[0].shape == (1, 16, 2, 4) and prepared.inputs[0].is_contiguous()
    assert mech.layout == "bhnd"
