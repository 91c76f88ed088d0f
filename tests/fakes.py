"""What harness tests share: fake mechanisms (OOM, errors, wrong answers, slow calls, on the
CPU), cases, records and run directories made on the spot, and the CLI run in-process."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time

import torch
from attnbench.baselines.linear import linear_masked

from attnbench import measure, records, registry
from attnbench.case import Case


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


class FakeClock:
    """A clock that moves only when a fake call says it took time (``sleep``): a sweep timed
    on it (``measure.clock``) decides its budgets the same way however busy the machine is."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def sleep(seconds: float) -> None:
    """Take ``seconds``: on the fake clock where one is installed, else for real."""
    if isinstance(measure.clock, FakeClock):
        measure.clock.sleep(seconds)
    else:
        time.sleep(seconds)


def sleepy(seconds_at_128: float):
    """A call whose time grows like n² (as the quadratic FLOP model predicts)."""
    def fn(q, k, v, decay=None):
        sleep(seconds_at_128 * (q.shape[2] / 128) ** 2)
        return linear_masked(q, k, v, decay)
    return fn


def compiles_per_length(compile_seconds: float, call_seconds: float = 0.001):
    """A call that "compiles" (sleeps ``compile_seconds``) on its first call at each new
    length, then takes ``call_seconds``."""
    seen: set[int] = set()

    def fn(q, k, v, decay=None):
        if q.shape[2] not in seen:
            seen.add(q.shape[2])
            sleep(compile_seconds)
        sleep(call_seconds)
        return linear_masked(q, k, v, decay)
    return fn


# --- cases, records and run directories made by tests --------------------------------------


def make_case(mechanism="linear-masked", mode="fwd", batch=1, heads=4, seq_len=1024,
              head_dim=32, value_dim=None, dtype="fp32", decay=True) -> Case:
    return Case(mechanism, mode, batch, heads, seq_len, head_dim,
                head_dim if value_dim is None else value_dim, dtype, decay)


def make_run(path, recs, gpu=None, schema=None):
    """A run directory holding ``recs`` (meta of ``schema`` if given, else the current one)."""
    path.mkdir(parents=True, exist_ok=True)
    records.write_meta(path, dict(command="test", environment=dict(gpu=gpu)))
    if schema is not None:
        (path / "meta.json").write_text(json.dumps({"schema_version": schema}))
    with records.RunWriter(path) as w:
        for r in recs:
            w.write(r)
    return path


def run_cli(*args) -> tuple[int, str, str]:
    """``attnbench *args`` in this process: (exit code, stdout, stderr). Usable in fixtures of
    any scope (it patches ``sys.argv`` itself)."""
    import pytest

    from attnbench.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        mp.setattr(sys, "argv", ["attnbench", *map(str, args)])
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()
