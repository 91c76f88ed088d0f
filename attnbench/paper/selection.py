"""What the paper compares: its mechanisms and their names, its shape, the rows of one shape."""

from __future__ import annotations

import numpy as np
import pandas as pd

from attnbench.case import DEFAULTS, SHAPE_COLUMNS
from attnbench.modes import OPERATOR_MODES
from attnbench.plots import shape_text
from attnbench.sizes import format_size

# The paper's mechanisms, in the paper's order, with the names its figures use.
PAPER_MECHANISMS = ("lightning1", "flash2", "lightning2", "linear-masked", "linear-cumsum")
PAPER_NAMES = {"lightning1": "Lightning-1", "flash2": "FlashAttention-2",
               "lightning2": "Lightning-2", "linear-masked": "Vanilla",
               "linear-cumsum": "naive cumsum"}
# The "paper" preset: the official repository's benchmark shape (the paper states none).
PAPER_SHAPE = {"batch": 4, "heads": 32, "head_dim": 128, "value_dim": 128, "dtype": "bf16"}
# A figure's shape: every shape column but decay, which belongs to each mechanism.
SHAPE_KEYS = [c for c in SHAPE_COLUMNS if c != "decay"]
MODE_WORDS = {m.name: m.words for m in OPERATOR_MODES}


def label(mech: str) -> str:
    """A mechanism in a legend: the paper's name with ours beside it, or just ours."""
    return f"{PAPER_NAMES[mech]} ({mech})" if mech in PAPER_NAMES else mech


def short(mech: str) -> str:
    """A mechanism in a sentence: the paper's name, or ours."""
    return PAPER_NAMES.get(mech, mech)


def lengths(ns) -> str:
    """'4k' or '4k..128k'."""
    ns = sorted(ns)
    return format_size(ns[0]) if len(ns) == 1 else f"{format_size(ns[0])}..{format_size(ns[-1])}"


def one_shape(df: pd.DataFrame, shape: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """The rows of one shape (``SHAPE_KEYS``): ``shape`` if given, else the paper's when the run
    has it, else the shape with the most records. Where a mechanism ran both with and without
    decay, its decay rows are kept (the paper's kernels decay)."""
    if shape is None:
        shapes = df.groupby(SHAPE_KEYS).size().sort_values(ascending=False, kind="stable")
        paper = tuple(PAPER_SHAPE.get(k, DEFAULTS.get(k)) for k in SHAPE_KEYS)
        shape = dict(zip(SHAPE_KEYS, paper if paper in shapes.index else shapes.index[0]))
    mask = np.logical_and.reduce([df[k] == v for k, v in shape.items()])
    part = df[mask]
    both = part.groupby("mechanism")["decay"].transform("nunique") > 1
    part = part[~both | part["decay"]]
    shape = {k: (v.item() if hasattr(v, "item") else v) for k, v in shape.items()}
    # fields at their defaults (no model: an operator shape) are not part of what it says
    return part, {k: v for k, v in shape.items() if not (k in DEFAULTS and v == DEFAULTS[k])}


def describe(part: pd.DataFrame, shape: dict) -> str:
    """'batch 4, heads 32, head dim 128, bf16, causal, cuda': a figure's subtitle."""
    device = part["device"].iloc[0] if len(part) else "no device"
    return f"{shape_text(shape)}, causal, {device}"


def order(mechanisms) -> list[str]:
    """The paper's mechanisms first, in its order, then the others sorted."""
    mechanisms = set(mechanisms)
    return ([m for m in PAPER_MECHANISMS if m in mechanisms]
            + sorted(mechanisms - set(PAPER_MECHANISMS)))
