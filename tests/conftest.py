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
