"""Tokens per second against sequence length, every mechanism of a run, one panel per mode."""

from __future__ import annotations

import pandas as pd

from attnbench.paper.selection import MODE_WORDS, PAPER_MECHANISMS, describe, label, one_shape
from attnbench.plots import draw_panel, legend_below, never_ran, plt, styles, suptitle


def tokens_per_second(df: pd.DataFrame, title: str = "", shape: dict | None = None):
    """Tokens/s (batch x length / time) of every mechanism at one shape (``one_shape``).

    A mechanism that is unsupported at every length is named in the title, not drawn.
    """
    part, shape = one_shape(df, shape)
    about = describe(part, shape)
    absent = never_ran(part)
    part = part[~part["mechanism"].isin(absent)]
    modes = [m for m in MODE_WORDS if m in set(part["mode"])] or ["fwd"]
    style = styles(part["mechanism"].unique(), first=PAPER_MECHANISMS)
    seq_lens = sorted(part["seq_len"].unique())
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 5.2), squeeze=False)
    for ax, mode in zip(axes.flat, modes):
        draw_panel(ax, part[part["mode"] == mode], "tokens_per_s", style, seq_lens, label=label,
                   empty=f"no {mode} records")
        ax.set_title(f"{MODE_WORDS[mode]}: tokens / s (batch x length / time)", fontsize=10)
        ax.set_xlabel("sequence length")
    head = "tokens per second against sequence length"
    notes = [head + (f" - {title}" if title else ""), about]
    if absent:
        notes.append("not run: " + "; ".join(f"{m} ({why or 'unsupported'})"
                                             for m, why in absent.items()))
    suptitle(fig, notes, width=50 * len(modes) + 10)
    legend_below(fig, part, style, label=label)
    return fig
