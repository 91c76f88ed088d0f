"""Fake mechanisms for harness tests: OOM, errors, wrong answers and slow calls, on the CPU."""

from __future__ import annotations

import time

import torch
from attnbench.baselines.linear import linear_masked

from attnbench import registry


def fake(name: str, fn, **kwargs) -> registry.Mechanism:
    values = dict(family="linear", summary="test double", devices=("cpu",), dtypes=("fp32",),
                  head_dims=(1, 1024), decay=True, oracle="linear-recurrent")
    values.update(kwargs)
    return registry.Mechanism(name=name, load=lambda: fn, **values)


def oom_from(n_oom: int):
    def fn(q, k, v, decay=None):
        if q.shape[2] >= n_oom:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return linear_masked(q, k, v, decay)
    return fn


def error_at(n_bad: int):
    def fn(q, k, v, decay=None):
        if q.shape[2] == n_bad:
            raise RuntimeError("boom: simulated kernel failure\nsecond line")
        return linear_masked(q, k, v, decay)
    return fn


def scaled(factor: float):
    def fn(q, k, v, decay=None):
        return linear_masked(q, k, v, decay) * factor
    return fn


def sleepy(seconds_at_128: float):
    """A call whose time grows like n² (as the quadratic FLOP model predicts)."""
    def fn(q, k, v, decay=None):
        time.sleep(seconds_at_128 * (q.shape[2] / 128) ** 2)
        return linear_masked(q, k, v, decay)
    return fn
