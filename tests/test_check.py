import pytest
import torch
from attnbench.baselines.linear import linear_masked
from fakes import fake, make_case, scaled

from attnbench import registry
from attnbench.check import (
    TOL_FLOOR,
    _model_err,
    check,
    check_model,
    from_layout,
    rel_err,
    to_layout,
)


@pytest.mark.parametrize("name", ["linear-recurrent", "linear-masked", "linear-cumsum",
                                  "softmax-naive", "sdpa-math"])
def test_references_pass_their_oracles(name):
    mech = registry.get(name)
    result = check(mech, make_case(name, head_dim=16, decay=mech.decay), "cpu")
    assert result.passed and result.max_rel_err < 1e-5


def test_tolerance_follows_flashattention_rule():
    result = check(registry.get("linear-masked"), make_case(head_dim=16), "cpu")
    assert result.tol == max(2 * result.baseline_err, TOL_FLOOR["fp32"])


@pytest.mark.parametrize("factor", [1.01, 0.0])
def test_wrong_mechanisms_fail(install, factor):
    install(fake("fake-wrong", scaled(factor)))
    assert not check(registry.get("fake-wrong"), make_case(head_dim=16), "cpu").passed


def test_wrong_gradients_fail(install):
    class DoubleGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    install(fake("fake-badgrad", lambda q, k, v, decay=None: linear_masked(DoubleGrad.apply(q),
                                                                           k, v, decay)))
    assert not check(registry.get("fake-badgrad"), make_case(head_dim=16), "cpu").passed


def test_nan_fails():
    assert not (rel_err(torch.full((3,), float("nan")), torch.ones(3, dtype=torch.float64))
                <= 1.0)


def test_native_layout_mechanism_is_checked_in_its_layout(install):
    def bnhd_masked(q, k, v, decay=None):
        assert q.shape[1] == 100  # (B, N, H, D): the check's length is 100
        return linear_masked(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                             decay).transpose(1, 2)
    install(fake("fake-bnhd", bnhd_masked, layout="bnhd"))
    assert check(registry.get("fake-bnhd"), make_case(head_dim=16), "cpu").passed


def test_layout_round_trip():
    x = torch.randn(2, 3, 5, 4)
    y = to_layout(x, "bnhd")
    assert y.shape == (2, 5, 3, 4) and y.is_contiguous()
    assert torch.equal(from_layout(y, "bnhd"), x)
    assert to_layout(x, "bhnd") is x


@pytest.mark.parametrize("name", ["linear-recurrent", "linear-masked", "linear-cumsum",
                                  "softmax-naive", "sdpa-math"])
def test_value_dim_other_than_head_dim_is_checked(name):
    mech = registry.get(name)
    result = check(mech, make_case(name, head_dim=16, value_dim=24, decay=mech.decay), "cpu")
    assert result.passed and result.max_rel_err < 1e-5


def _model_case(name, family, dtype):
    return make_case(name, head_dim=16, dtype=dtype, decay=family == "tnl").with_(
        model=family, size="tiny")


@pytest.mark.parametrize("family, name", [("tnl", "linear-masked"), ("llama", "sdpa-math")])
def test_a_model_with_a_correct_attention_matches_the_fp32_reference_model(family, name):
    mech = registry.get(name)
    fp32 = check_model(mech, _model_case(name, family, "fp32"), "cpu")
    assert fp32.passed and fp32.max_rel_err < 1e-5 and fp32.tol == TOL_FLOOR["fp32"]
    bf16 = check_model(mech, _model_case(name, family, "bf16"), "cpu")
    # bf16 autocast: the reference model's own error under bf16 sets the tolerance
    assert bf16.passed and 1e-4 < bf16.baseline_err < 0.05 and bf16.tol == 2 * bf16.baseline_err


WRONG_ATTENTION = {"no decay": lambda q, k, v, decay=None: linear_masked(q, k, v, None),
                   "decay 10% low": lambda q, k, v, decay=None: linear_masked(q, k, v,
                                                                               0.9 * decay),
                   "zero": scaled(0.0)}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("wrong", sorted(WRONG_ATTENTION))
def test_a_model_with_a_wrong_attention_fails(install, wrong, dtype):
    """Also under bf16, whose tolerance is twice the reference model's own bf16 error (0.19
    for TNL at 0.4B on the H100: the deep model amplifies rounding), a subtly wrong attention
    (decay rates 10% low) fails: here 0.041 against 0.025."""
    install(fake("fake-model-wrong", WRONG_ATTENTION[wrong]))
    result = check_model(registry.get("fake-model-wrong"),
                         _model_case("fake-model-wrong", "tnl", dtype), "cpu")
    assert not result.passed
    assert result.max_rel_err > (10 if dtype == "fp32" else 1.5) * result.tol


def test_a_missing_gradient_fails_the_model_check():
    grads = {"a": torch.ones(2)}
    assert _model_err(1.0, {}, 1.0, grads) != _model_err(1.0, {}, 1.0, grads)  # NaN
    assert _model_err(1.0, grads, 1.0, grads) == 0.0
    assert _model_err(1.1, grads, 1.0, grads) == pytest.approx(0.1)
