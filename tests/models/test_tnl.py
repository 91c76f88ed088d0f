"""The TransNormerLLM-style model on the CPU: linear mechanisms agree (lightning2 through the
Triton interpreter included), causality, TNL's decay and LRPE, layouts, refusals."""

import pytest
import torch
from attnbench.baselines.linear import linear_masked
from attnbench.kernels import default_decay

from attnbench import registry
from attnbench.models import build_model, config_for
from attnbench.models.tnl import SRMSNorm, tnl_decay


@pytest.mark.parametrize("mechanism", ["linear-masked", "linear-recurrent"])
def test_causal(mechanism, tokens):
    model = build_model("tnl", "tiny", mechanism, "cpu", "fp32")
    ids, _ = tokens(model.config.vocab_size, 2, 20)
    changed = ids.clone()
    changed[:, 11] = (changed[:, 11] + 1) % model.config.vocab_size
    with torch.no_grad():
        a, b = model(ids), model(changed)  # [B, N, V]
    torch.testing.assert_close(a[:, :11], b[:, :11], rtol=0, atol=0)
    assert not torch.allclose(a[:, 11:], b[:, 11:])


@pytest.mark.parametrize("mechanism", ["linear-masked", "lightning2"])
def test_same_loss_and_gradients_as_the_recurrence(mechanism, tokens, grads):
    """Same weights (same seed): the masked form and our Triton kernel (the interpreter on the
    CPU) give the loss and gradients of the token-by-token recurrence."""
    ids, targets = tokens(512, 2, 32)
    ref_loss, ref = grads(build_model("tnl", "tiny", "linear-recurrent", "cpu", "fp32"),
                          ids, targets)
    loss, got = grads(build_model("tnl", "tiny", mechanism, "cpu", "fp32"), ids, targets)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_decay_follows_tnl_per_layer():
    model = build_model("tnl", "tiny", "linear-masked", "cpu", "fp32")
    rates = [layer.token_mixer.decay for layer in model.layers]  # [H] each
    torch.testing.assert_close(rates[0], default_decay(4) * (1 + 1e-5))
    torch.testing.assert_close(rates[-1], default_decay(4) * 1e-5)
    assert tnl_decay(8, 12, 24).dtype == torch.float32
    torch.testing.assert_close(tnl_decay(8, 12, 24), default_decay(8) * (1 - 12 / 23 + 1e-5))
    assert all((r > 0).all() for r in rates)


def test_mechanism_sees_lrpe_head_dims_and_tnl_decay(install, tokens):
    """bnhd layout: q, k, v arrive as (B, N, H, D); LRPE doubles D in the first layer only."""
    calls = []

    def bnhd(q, k, v, decay=None):  # [B, N, H, D]
        calls.append((tuple(q.shape), tuple(v.shape), decay))
        out = linear_masked(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), decay)
        return out.transpose(1, 2).contiguous()  # [B, N, H, E]

    install(registry.Mechanism(name="fake-bnhd", family="linear", load=lambda: bnhd,
                               summary="test double", layout="bnhd", devices=("cpu",),
                               decay=True))
    ids, _ = tokens(512, 2, 16)
    with torch.no_grad():
        a = build_model("tnl", "tiny", "fake-bnhd", "cpu", "fp32")(ids)
        b = build_model("tnl", "tiny", "linear-masked", "cpu", "fp32")(ids)
    assert [c[:2] for c in calls] == [((2, 16, 4, 32), (2, 16, 4, 16)),
                                      ((2, 16, 4, 16), (2, 16, 4, 16))]
    assert calls[0][2].shape == (4,) and calls[0][2].dtype == torch.float32
    torch.testing.assert_close(a, b)


def test_srmsnorm_has_no_parameters_and_unit_rms():
    norm = SRMSNorm(1e-6)
    y = norm(torch.randn(3, 5, 64) * 7)
    assert not list(norm.parameters())
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3, 5))


def test_no_biases_and_one_lrpe():
    model = build_model("tnl", "tiny", "linear-masked", "meta")
    names = [name for name, _ in model.named_parameters()]
    assert not [n for n in names if n.endswith("bias")]
    assert [n for n in names if "lrpe" in n] == ["layers.0.token_mixer.lrpe.theta"]
    assert config_for("tnl", "tiny").lrpe_layers == 1


@pytest.mark.parametrize("mechanism,why", [
    ("sdpa-math", "tnl takes a linear attention mechanism; sdpa-math is softmax"),
    ("flash2", "tnl takes a linear attention mechanism; flash2 is softmax"),
    ("linear-cumsum", "tnl needs per-head decay; linear-cumsum takes none"),
])
def test_refuses_softmax_and_decay_free_mechanisms(mechanism, why):
    with pytest.raises(ValueError, match=why):
        build_model("tnl", "tiny", mechanism, "meta")
