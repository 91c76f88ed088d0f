"""Helpers the model tests share: fixed token batches and loss-and-gradient probes."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _two_threads():
    """The budget is seconds on two cores: do not let one test fan out over more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


def make_tokens(vocab: int, batch: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random ids and their next-token targets, (batch, n) int64 each."""
    ids = torch.randint(0, vocab, (batch, n + 1), generator=torch.Generator().manual_seed(seed))
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def loss_and_grads(model, ids, targets, checkpointing=False):
    """The loss and a {name: grad} dict of one forward and backward (grads cleared after)."""
    model.zero_grad(set_to_none=True)
    loss = model(ids, targets, checkpointing=checkpointing)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.fixture
def tokens():
    return make_tokens


@pytest.fixture
def grads():
    return loss_and_grads
