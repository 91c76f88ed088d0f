"""The float64 oracles against each other: they are only trusted because they agree."""

import pytest
import torch
from attnbench.baselines.linear import decay_mask, linear_cumsum, linear_masked, linear_recurrent
from attnbench.kernels.lightning2 import default_decay


def _inputs(b, h, n, d, e, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, h, n, e, generator=g, dtype=torch.float64)
    return q, k, v


@pytest.mark.parametrize("b,h,n,d,e", [(1, 1, 1, 4, 4), (2, 3, 37, 8, 5), (1, 4, 64, 16, 16)],
                         ids=lambda x: str(x))
@pytest.mark.parametrize("with_decay", [True, False], ids=["decay", "nodecay"])
def test_recurrent_equals_masked(b, h, n, d, e, with_decay):
    q, k, v = _inputs(b, h, n, d, e, seed=n)
    decay = default_decay(h).double() if with_decay else None
    torch.testing.assert_close(linear_recurrent(q, k, v, decay), linear_masked(q, k, v, decay),
                               rtol=1e-10, atol=1e-10)


def test_cumsum_equals_recurrent_without_decay():
    q, k, v = _inputs(2, 2, 50, 8, 6, seed=3)
    torch.testing.assert_close(linear_cumsum(q, k, v), linear_recurrent(q, k, v),
                               rtol=1e-10, atol=1e-10)


def test_against_direct_sum():
    """o_t = q_t · sum_{j<=t} lambda^(t-j) k_j^T v_j, written out for one head."""
    q, k, v = _inputs(1, 1, 9, 3, 2, seed=5)
    rate = torch.tensor([0.3], dtype=torch.float64)
    lam = torch.exp(-rate)
    expected = torch.stack([
        sum(lam ** (t - j) * (q[0, 0, t] @ k[0, 0, j]) * v[0, 0, j] for j in range(t + 1))
        for t in range(9)
    ])
    torch.testing.assert_close(linear_masked(q, k, v, rate)[0, 0], expected)


def test_decay_mask_is_causal_and_decays():
    m = decay_mask(torch.tensor([0.5]), 4, torch.float64, "cpu")[0]
    assert torch.all(m.triu(1) == 0)
    torch.testing.assert_close(m[3, 1], torch.exp(torch.tensor(-1.0, dtype=torch.float64)))


def test_default_decay_is_the_paper_slopes():
    torch.testing.assert_close(default_decay(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))


def test_bad_shapes_and_cumsum_decay_raise():
    q, k, v = _inputs(1, 2, 5, 4, 4, seed=0)
    with pytest.raises(ValueError, match="decay must have shape"):
        linear_masked(q, k, v, torch.ones(3))
    with pytest.raises(ValueError, match="expected q, k"):
        linear_recurrent(q[0], k, v)
    with pytest.raises(ValueError, match="no decay"):
        linear_cumsum(q, k, v, torch.ones(2))
