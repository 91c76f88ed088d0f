"""attnbench: compare attention mechanisms (softmax and linear) as sequences grow.

The library in five names (imported on first use, so ``attnbench.kernels`` stays light)::

    from attnbench import build_spec, run_sweep
    result = run_sweep(build_spec("quick", "cuda", mechanisms="lightning2,softmax"), "results/x")
    result.frame  # tidy pandas DataFrame, one row per Case

``Case`` (one point of a sweep), ``prepare_call`` (a case made ready to time) and
``load`` (a run directory as a DataFrame) are the others.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Case": "attnbench.case",
    "SweepSpec": "attnbench.spec",
    "build_spec": "attnbench.spec",
    "run_sweep": "attnbench.runner",
    "SweepResult": "attnbench.runner",
    "prepare_call": "attnbench.prepare",
    "load": "attnbench.records",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'attnbench' has no attribute {name!r}")
