"""Our runtimes beside the official repository's published ones, and their ratio."""

from __future__ import annotations

import textwrap

import pandas as pd
from matplotlib.lines import Line2D

from attnbench.paper.official import nothing_to_compare, official_table
from attnbench.paper.selection import MODE_WORDS, PAPER_MECHANISMS, PAPER_SHAPE, label, order
from attnbench.plots import finish_axis, legend_below, plt, shape_text, styles, suptitle


def official_figure(df: pd.DataFrame, title: str = ""):
    """Forward and backward runtime, theirs dotted with hollow marks and ours solid, then
    ours / theirs (forward solid, backward dashed). Where the run has nothing at the official
    shape, the third panel says so instead of drawing an empty ratio."""
    table = official_table(df)
    nothing = nothing_to_compare(df, table)
    style = styles(table["mechanism"].unique(), first=PAPER_MECHANISMS)
    seq_lens = sorted(table["seq_len"].unique())
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    for ax, mode in zip(axes[:2], ("fwd", "bwd")):
        rows = table[table["mode"] == mode]
        for mech, line in rows.groupby("mechanism", sort=False):
            st = style[mech]
            ax.plot(line["seq_len"], line["official_ms"], color=st["color"], marker=st["marker"],
                    markerfacecolor="white", linestyle=":", markersize=5)
            if line["ours_ms"].notna().any():
                ax.plot(line["seq_len"], line["ours_ms"], color=st["color"],
                        marker=st["marker"], markersize=5)
        finish_axis(ax, seq_lens, pd.concat([rows["official_ms"], rows["ours_ms"]]))
        ax.set_title(f"{MODE_WORDS[mode]}: runtime (ms)", fontsize=10)
        ax.set_xlabel("sequence length")
    ax = axes[2]
    if nothing:
        ax.set_axis_off()
        ax.text(0.5, 0.5, textwrap.fill(nothing, 44), transform=ax.transAxes, ha="center",
                va="center", fontsize=10, color="0.25")
    else:
        dashes = {"fwd": "-", "bwd": "--"}  # the panels' modes: forward solid, backward dashed
        for (mech, mode), rows in table.groupby(["mechanism", "mode"], sort=False):
            st = style[mech]
            ax.plot(rows["seq_len"], rows["ratio"], color=st["color"], marker=st["marker"],
                    linestyle=dashes.get(mode, "--"), markersize=5)
        finish_axis(ax, seq_lens, table["ratio"])
        ax.axhline(1.0, color="0.3", linewidth=0.8)
        ax.set_title("ours / official: forward solid, backward dashed\n(below 1: ours faster)",
                     fontsize=10)
        ax.set_xlabel("sequence length")
    head = "ours against the official lightning-attention README's operator timings"
    device = df["device"].iloc[0] if len(df) else "no device"
    ours = "nothing of ours at this shape" if nothing else f"ours on {device}"
    notes = [head + (f" - {title}" if title else ""),
             f"{shape_text(PAPER_SHAPE)}, causal; {ours}, theirs on a GPU the README does not "
             "state"]
    unmeasured = {m: ", ".join(sorted(set(rows["ours_status"])))
                  for m, rows in table.groupby("mechanism") if rows["ratio"].isna().all()}
    if unmeasured and not nothing:
        notes.append("no measurement of ours (their line only): " + "; ".join(
            f"{label(m)} ({unmeasured[m]})" for m in order(unmeasured)))
    suptitle(fig, notes, width=160)
    theirs = Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle=":",
                    label="official README (dotted)")
    if nothing:  # their lines only: the mechanisms as drawn, dotted and hollow
        extra = [Line2D([], [], color=style[m]["color"], marker=style[m]["marker"],
                        markerfacecolor="white", linestyle=":", label=label(m))
                 for m in order(table["mechanism"].unique())]
        legend_below(fig, table.iloc[:0].assign(status="ok", check=""), style, ncol=6,
                     extra=[*extra, theirs])
        return fig
    legend_below(fig, table.assign(status="ok", check=""), style, label=label, ncol=6, extra=[
        Line2D([], [], color="0.3", marker="o", label="ours (solid)"), theirs,
        Line2D([], [], color="0.3", linestyle="--", label="ratio, backward (dashed)")])
    return fig
