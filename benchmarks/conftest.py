"""pytest-benchmark suite set-up: the grid, and timed calls built by the harness.

``pytest benchmarks/`` times every mechanism that runs on this machine (the GPU if torch
sees one, else the CPU references) on a small fixed grid. Each case is a ``Case`` and its
call comes from ``attnbench.prepare_call``, the same function ``attnbench run`` times, so
these numbers describe the same calls; only the timer differs (pytest-benchmark's wall clock
around a synchronised call, with no L2 flush between rounds), so compare pytest-benchmark
runs with each other, not with ``attnbench run``.

Options: ``--mechanisms lightning2,softmax`` (names or families, as for ``attnbench run``).
"""

from __future__ import annotations

import pytest
import torch

from attnbench import check, measure, modes, registry
from attnbench.case import Case
from attnbench.prepare import PreparedCall, prepare_call, unsupported_reason

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


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    g = GRID
    cases = [
        Case(m.name, mode, g["batch"], g["heads"], n, g["head_dim"], g["head_dim"], g["dtype"],
             m.decay)
        for m in registry.select(metafunc.config.getoption("--mechanisms"), DEVICE)
        for mode in g["modes"]
        for n in g["seq_lens"]
    ]
    metafunc.parametrize("case", cases, ids=[f"{c.mechanism}-{c.mode}-{c.label()}"
                                             for c in cases])


@pytest.fixture(scope="session")
def grid() -> dict:
    """The device and the grid's fixed values (a fixture: test modules never import conftest)."""
    return dict(GRID, device=DEVICE, min_rounds=MIN_ROUNDS, max_rounds=MAX_ROUNDS,
                max_call_s=MAX_CALL_S)


@pytest.fixture(scope="session")
def correctness():
    """Case -> CheckResult, each configuration checked once per session."""
    cache = {}

    def get(mech: registry.Mechanism, case: Case):
        key = modes.of(case).check_case(case)  # the sweep's check of the case
        if key not in cache:
            cache[key] = check.check(mech, key, DEVICE)
        return cache[key]

    return get


@pytest.fixture
def timed_call(correctness):
    """Builds the PreparedCall of a case, or skips with the reason it cannot run here."""
    made = []

    def build(case: Case) -> PreparedCall:
        mech = registry.get(case.mechanism)
        avail = mech.available(DEVICE)
        if not avail:
            pytest.skip(avail.reason)
        reason = unsupported_reason(mech, case)  # the sweep's gate: the mode's limits
        if reason:
            pytest.skip(reason)
        result = correctness(mech, case)
        if not result.passed:  # a wrong kernel's speed is no number to track
            pytest.fail(f"{mech.name} fails its float64 check: rel err "
                        f"{result.max_rel_err:.2e} > tol {result.tol:.2e}")
        made.append(prepare_call(mech, case, DEVICE))
        return made[-1]

    yield build
    made.clear()
    measure.free_memory(DEVICE)
