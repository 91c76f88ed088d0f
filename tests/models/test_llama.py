"""The LLaMA-style model on the CPU: softmax mechanisms agree, causality, layouts, refusals."""

import pytest
import torch
from attnbench.baselines.softmax import softmax_naive

from attnbench import registry
from attnbench.models import build_model
from attnbench.models.llama import apply_rope, rope_tables

SOFTMAX = ["sdpa-math", "softmax-naive"]


@pytest.mark.parametrize("mechanism", SOFTMAX)
def test_causal(mechanism, tokens):
    model = build_model("llama", "tiny", mechanism, "cpu", "fp32")
    ids, _ = tokens(model.config.vocab_size, 2, 24)
    changed = ids.clone()
    changed[:, 15] = (changed[:, 15] + 1) % model.config.vocab_size
    with torch.no_grad():
        a, b = model(ids), model(changed)  # [B, N, V]
    torch.testing.assert_close(a[:, :15], b[:, :15], rtol=0, atol=0)
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_softmax_mechanisms_agree(tokens, grads):
    ids, targets = tokens(512, 2, 24)
    (la, ga), (lb, gb) = (grads(build_model("llama", "tiny", m, "cpu", "fp32"), ids, targets)
                          for m in SOFTMAX)
    torch.testing.assert_close(la, lb)
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bnhd_mechanism_gets_views_and_matches_bhnd(install, tokens):
    """A (B, N, H, D) mechanism sees q, k, v as views of the projection and gives the same
    model as the (B, H, N, D) one."""
    seen = []

    def bnhd(q, k, v, decay=None):  # [B, N, H, D]
        seen.append(q.shape)
        out = softmax_naive(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2).contiguous()  # [B, N, H, E]

    install(registry.Mechanism(name="fake-bnhd", family="softmax", load=lambda: bnhd,
                               summary="test double", layout="bnhd", devices=("cpu",)))
    ids, _ = tokens(512, 2, 24)
    with torch.no_grad():
        a = build_model("llama", "tiny", "fake-bnhd", "cpu", "fp32")(ids)
        b = build_model("llama", "tiny", "softmax-naive", "cpu", "fp32")(ids)
    assert seen[0] == (2, 24, 4, 16)
    torch.testing.assert_close(a, b)


def test_rope_scores_depend_only_on_the_offset():
    cos, sin = rope_tables(12, 16, 10000.0, "cpu")  # [N, 1, D/2]
    q = torch.randn(1, 1, 1, 16).expand(1, 12, 1, 16)  # the same vector at every position
    k = torch.randn(1, 1, 1, 16).expand(1, 12, 1, 16)
    rq, rk = apply_rope(q, cos, sin)[0, :, 0], apply_rope(k, cos, sin)[0, :, 0]  # [N, D]
    scores = rq @ rk.T  # [N, N]
    torch.testing.assert_close(scores[5, 2], scores[9, 6])
    torch.testing.assert_close(rq.norm(dim=-1), q[0, :, 0].norm(dim=-1))


@pytest.mark.parametrize("mechanism", ["linear-masked", "lightning2"])
def test_refuses_a_linear_mechanism(mechanism):
    with pytest.raises(ValueError, match=f"llama takes a softmax attention mechanism; "
                                         f"{mechanism} is linear"):
        build_model("llama", "tiny", mechanism, "meta")


def test_bhnd_mechanism_gets_q_and_k_contiguous_from_the_rotation(install, tokens):
    """The rotation writes q and k in the mechanism's (B, H, N, D) order: no copy left to it."""
    seen = []

    def bhnd(q, k, v, decay=None):  # [B, H, N, D]
        seen.append((q.shape, q.is_contiguous(), k.is_contiguous()))
        return softmax_naive(q, k, v)

    install(registry.Mechanism(name="fake-bhnd", family="softmax", load=lambda: bhnd,
                               summary="test double", devices=("cpu",)))
    ids, _ = tokens(512, 2, 24)
    with torch.no_grad():
        build_model("llama", "tiny", "fake-bhnd", "cpu", "fp32")(ids)
    assert seen == [((2, 4, 24, 16), True, True)] * 2
