"""Test set-up: Triton's CPU interpreter when there is no GPU, NaN-poisoned allocations."""

import os

import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, so set it before any test module
# imports attnbench.kernels. On a machine with a GPU the real compiler runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()
# Where kernel tests run: the GPU if there is one, else the CPU through the interpreter.
KERNEL_DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _peaks_cache(tmp_path_factory):
    """Measured device peaks go to a cache of this session, not the user's ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def nan_poisoned_empty(monkeypatch):
    """Fill floating torch.empty/empty_like with NaN, so an output a kernel never writes fails."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(real_empty_like(*a, **kw)))


@pytest.fixture
def install(monkeypatch):
    """Add mechanisms (e.g. the test doubles in fakes.py) to the registry for one test."""
    from attnbench import registry

    def add(*mechs):
        everything = registry.MECHANISMS + mechs
        monkeypatch.setattr(registry, "MECHANISMS", everything)
        monkeypatch.setattr(registry, "_BY_NAME", {m.name: m for m in everything})

    return add


@pytest.fixture
def fake_clock(monkeypatch):
    """Time as the fake calls of fakes.py (``sleepy``) say they take it: ``measure.clock``
    moves only when they sleep, so a budget's verdict does not depend on the machine."""
    from fakes import FakeClock

    from attnbench import measure

    clock = FakeClock()
    monkeypatch.setattr(measure, "clock", clock)
    return clock


# --- what the model tests (tests/models) share: token batches, loss-and-gradient probes ---


@pytest.fixture(autouse=True)
def _two_threads():
    """CI has two cores: do not let one test fan out over more (the model tests)."""
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
    from attnbench.models.train import lm_step_loss

    model.zero_grad(set_to_none=True)
    loss = lm_step_loss(model, ids, targets, checkpointing)
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
