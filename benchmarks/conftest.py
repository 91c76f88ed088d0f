"""pytest-benchmark suite set-up: the grid, and timed calls built by the harness.

``pytest benchmarks/`` times every mechanism that runs on this machine (the GPU if torch
sees one, else the CPU references) on a small fixed grid. Inputs, decay rates and FLOP
counts come from the harness (``check.random_inputs``, ``check.decay_rates``,
``registry.mode_flops``), so these numbers describe the same calls as ``attnbench run``;
only the timer differs (pytest-benchmark's wall clock around a synchronised call, with no
L2 flush between rounds), so compare pytest-benchmark runs with each other, not with
``attnbench run``.

Options: ``--mechanisms lightning2,softmax`` (names or families, as for ``attnbench run``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from attnbench import check, measure, registry
from attnbench.spec import Case

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Small and fixed, so a change in a number is a change in the code. The CPU grid keeps the
# whole suite under ~30 s on 2 cores.
GRID = {
    "cuda": dict(batch=2, heads=16, head_dim=128, dtype="bf16", seq_lens=(1024, 4096),
                 modes=("fwd", "bwd"), budget_s=1.0),
    "cpu": dict(batch=1, heads=4, head_dim=32, dtype="fp32", seq_lens=(256,),
                modes=("fwd", "bwd"), budget_s=0.3),
}[DEVICE]
MIN_ROUNDS, MAX_ROUNDS = 5, 200
MAX_CALL_S = 2.0  # a case whose single call takes longer is skipped, not timed


def pytest_addoption(parser):
    parser.addoption("--mechanisms", default="all",
                     help="attnbench mechanisms or families to benchmark (default: all that "
                          "run on this device)")


def case_id(case: Case) -> str:
    decay = "-decay" if case.decay else ""
    return (f"{case.mechanism}-{case.mode}-B{case.batch}-H{case.heads}-N{case.seq_len}-"
            f"D{case.head_dim}-{case.dtype}{decay}")


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    cases = [
        Case(m.name, mode, GRID["batch"], GRID["heads"], n, GRID["head_dim"], GRID["dtype"],
             m.decay)
        for m in registry.select(metafunc.config.getoption("--mechanisms"), DEVICE)
        for mode in GRID["modes"]
        for n in GRID["seq_lens"]
    ]
    metafunc.parametrize("case", cases, ids=[case_id(c) for c in cases])


@dataclass
class TimedCall:
    """One case ready to time: ``call()`` runs it (async on a GPU), ``target()`` waits for it."""

    case: Case
    mech: registry.Mechanism
    call: object
    inputs: list

    def target(self) -> None:
        self.call()
        measure.synchronize(DEVICE)

    def reset_grads(self) -> None:
        for x in self.inputs:
            x.grad = None

    def flops(self) -> float:
        c = self.case
        return registry.mode_flops(
            self.mech.flops(c.batch, c.heads, c.seq_len, c.head_dim, c.head_dim), c.mode)


@pytest.fixture(scope="session")
def grid() -> dict:
    """The device and the grid's fixed values (a fixture: test modules never import conftest)."""
    return dict(GRID, device=DEVICE, min_rounds=MIN_ROUNDS, max_rounds=MAX_ROUNDS,
                max_call_s=MAX_CALL_S)


@pytest.fixture(scope="session")
def correctness():
    """(mechanism, head_dim, dtype, decay) -> CheckResult, each checked once per session."""
    cache = {}

    def get(mech: registry.Mechanism, case: Case):
        key = (mech.name, case.head_dim, case.dtype, case.decay)
        if key not in cache:
            cache[key] = check.check(mech, case.head_dim, case.dtype, case.decay, DEVICE)
        return cache[key]

    return get


@pytest.fixture
def timed_call(correctness):
    """Builds the TimedCall of a case, or skips with the reason it cannot run here."""
    made = []

    def build(case: Case) -> TimedCall:
        mech = registry.get(case.mechanism)
        avail = mech.available(DEVICE)
        if not avail:
            pytest.skip(avail.reason)
        reason = mech.unsupported_reason(case.seq_len, case.head_dim, case.dtype, case.decay)
        if reason or (case.mode != "fwd" and not mech.backward):
            pytest.skip(reason or f"{mech.name} has no backward pass")
        result = correctness(mech, case)
        if not result.passed:  # a wrong kernel's speed is no number to track
            pytest.fail(f"{mech.name} fails its float64 check: rel err "
                        f"{result.max_rel_err:.2e} > tol {result.tol:.2e}")

        fn = mech.callable()
        b, h, n, d = case.batch, case.heads, case.seq_len, case.head_dim
        q, k, v = check.random_inputs(b, h, n, d, registry.DTYPES[case.dtype], DEVICE,
                                      mech.layout, case.mode != "fwd", seed=n)
        decay = check.decay_rates(mech, case.decay, h, DEVICE)
        if case.mode == "fwd":
            def call():
                return fn(q, k, v, decay)
        elif case.mode == "bwd":  # the graph is kept; only the backward pass is timed
            out = fn(q, k, v, decay)
            d_out = torch.randn_like(out)

            def call():
                out.backward(d_out, retain_graph=True)
        else:
            with torch.no_grad():
                d_out = torch.randn_like(fn(q, k, v, decay))

            def call():
                fn(q, k, v, decay).backward(d_out)

        # The same test hook as `attnbench run` (ATTNBENCH_PLANT_SLOWDOWN; off unless set).
        from attnbench.compare import planted_slowdown

        made.append(TimedCall(case, mech, planted_slowdown(mech.name, call, DEVICE), [q, k, v]))
        return made[-1]

    yield build
    made.clear()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
