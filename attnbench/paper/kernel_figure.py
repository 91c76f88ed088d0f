"""Fig. 3 of the Lightning Attention-2 paper (arXiv 2401.04658v2), redrawn from a run."""

from __future__ import annotations

import pandas as pd

from attnbench.paper.selection import PAPER_MECHANISMS, describe, label, one_shape
from attnbench.plots import draw_panel, legend_below, never_ran, plt, styles, suptitle


def paper_kernels(df: pd.DataFrame, memory: str = "peak_mem_mib", title: str = "",
                  shape: dict | None = None):
    """Runtime and memory of forward and backward against sequence length.

    Four log-log panels (forward/backward runtime in ms, forward/backward peak memory in MiB,
    inputs included as the paper's figure counts them; ``memory="extra_mem_mib"`` for the
    part above the inputs) for the paper's mechanisms found in the run; a length without a
    measurement is a mark at the top edge (x: out of memory, S: skipped, ...). A mechanism the
    run lacks, or that is unsupported at every length, is named in the title, never drawn.
    """
    part, shape = one_shape(df, shape)
    seq_lens, about = sorted(part["seq_len"].unique()), describe(part, shape)
    part = part[part["mechanism"].isin(PAPER_MECHANISMS)]
    absent = never_ran(part)  # unsupported at every length
    part = part[~part["mechanism"].isin(absent)]
    present = [m for m in PAPER_MECHANISMS if m in set(part["mechanism"])]
    missing = [m for m in PAPER_MECHANISMS if m not in present and m not in absent]
    style = styles(present, first=PAPER_MECHANISMS)
    what = "peak memory" if memory == "peak_mem_mib" else "memory above inputs"
    panels = [("fwd", "time_ms", "forward: runtime (ms)"),
              ("bwd", "time_ms", "backward: runtime (ms)"),
              ("fwd", memory, f"forward: {what} (MiB)"),
              ("bwd", memory, f"backward: {what} (MiB)")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 9))
    for ax, (mode, column, text) in zip(axes.flat, panels):
        sub = part[part["mode"] == mode]
        on_cpu = len(sub) and (sub["device"] == "cpu").all()
        empty = ("memory is not measured on the CPU" if column != "time_ms" and on_cpu
                 else f"no {mode} records")
        draw_panel(ax, sub, column, style, seq_lens, band=column == "time_ms", label=label,
                   empty=empty)
        ax.set_title(text, fontsize=10)
        ax.set_xlabel("sequence length")
    head = "Lightning Attention-2 paper, Fig. 3: kernel runtime and memory"
    notes = [head + (f" - {title}" if title else ""), about]
    if missing:
        notes.append("not in this run: " + ", ".join(label(m) for m in missing))
    if absent:
        notes.append("not run: " + "; ".join(f"{label(m)} ({why or 'unsupported'})"
                                             for m, why in absent.items()))
    suptitle(fig, notes)
    legend_below(fig, part, style, label=label)
    return fig
