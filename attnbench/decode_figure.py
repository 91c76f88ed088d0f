"""Decode against context: tokens/s and the memory kept, a line per mechanism, a row per batch.

``attnbench plot --figure decode`` (and the end of a run with decode records). The figure
draws the run's ``decode`` records at one shape (heads, head dims, dtype: the shape with the
most records), one row of panels per batch: tokens/s generated (batch / step time) and
the KV cache or state kept for the context (``cache_mib``), both against the context length.
``decode_findings`` says, from the same records, where the state beats the cache: per batch,
the context from which the linear step is faster than the fastest softmax step, the ratio at
128k and at the longest context both measured, and the memory of cache against state there.
"""

from __future__ import annotations

import pandas as pd

from attnbench import modes
from attnbench.case import SHAPE_COLUMNS
from attnbench.errors import UsageError
from attnbench.plots import draw_panel, legend_below, never_ran, plt, shape_text, styles, suptitle
from attnbench.sizes import format_size

LINEAR = "lightning2"  # the state side of the findings, where the run has it
REPORTED_CONTEXT = 128 * 1024  # a ratio the findings give wherever it was measured
SHAPE = [c for c in SHAPE_COLUMNS if c not in ("batch", "decay")]


def decode_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The decode records of the shape (``SHAPE``) that has the most of them; UsageError if
    the run has none."""
    part = modes.rows(df, modes.DECODE)
    if part.empty:
        raise UsageError("no decode records in this run; run with --modes decode")
    sizes = part.groupby(SHAPE).size().sort_values(ascending=False, kind="stable")
    shape = sizes.index[0] if len(SHAPE) > 1 else (sizes.index[0],)
    mask = pd.Series(True, index=part.index)
    for col, value in zip(SHAPE, shape):
        mask &= part[col] == value
    return part[mask]


def decode_figure(df: pd.DataFrame, title: str = ""):
    """Tokens/s and the cache or state kept against context, a row of panels per batch."""
    part = decode_rows(df)
    absent = never_ran(part)
    drawn = part[~part["mechanism"].isin(absent)]
    drawn = drawn if len(drawn) else part
    batches = sorted(drawn["batch"].unique())
    contexts = sorted(drawn["seq_len"].unique())
    style = styles(drawn["mechanism"].unique(), first=[LINEAR])
    fig, axes = plt.subplots(len(batches), 2, squeeze=False, sharey="col",
                             figsize=(12.0, 3.4 * len(batches) + 1.8))
    panels = (("tokens_per_s", "tokens / s generated (batch / step time)"),
              ("cache_mib", "KV cache or state kept, MiB (equal ones overlap)"))
    for i, b in enumerate(batches):
        rows = drawn[drawn["batch"] == b]
        for j, (column, text) in enumerate(panels):
            ax = axes[i][j]
            draw_panel(ax, rows, column, style, contexts, empty=f"no ok record at batch {b}")
            ax.set_title(f"batch {b}: {text}", fontsize=10)
            if i == len(batches) - 1:
                ax.set_xlabel("context length (tokens already processed)")
    # each panel set its ticks and limits from its own values: with shared columns, set the
    # limits from all of them once more
    for j, (column, _) in enumerate(panels):
        values = drawn.loc[drawn["status"] == "ok", column].dropna()
        values = values[values > 0]
        if len(values):
            axes[0][j].set_ylim(values.min() / 1.6, values.max() * 2.5)
    notes = ["decode: one new token per sequence against a context" + (f" - {title}" if title
                                                                      else ""),
             f"{_shape(drawn.iloc[0])}, {drawn['device'].iloc[0]}"]
    if absent:
        notes.append("cannot decode here (reasons in the records): " + ", ".join(absent))
    suptitle(fig, notes, width=100)
    legend_below(fig, drawn, style, ncol=4)
    # room for a title of three lines above the first row's panel titles
    title = fig._suptitle.get_window_extent(fig.canvas.get_renderer()).height
    fig.subplots_adjust(top=1 - (title + 70) / fig.bbox.height)
    return fig


def _shape(row) -> str:
    """The shape of the figure's records but the batch (a column each)."""
    return ", ".join(w for w in shape_text(row).split(", ") if not w.startswith("batch "))


def _n(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _us(ms: float) -> str:
    return f"{ms * 1e3:,.3g} us" if ms < 1 else f"{ms:,.3g} ms"


def decode_findings(df: pd.DataFrame) -> list[str]:
    """Per batch: where the linear step (``LINEAR``, else the fastest linear mechanism) gets
    faster than the fastest softmax step, the ratio and the memory of the cache against the
    state at 128k and at the longest context both measured; and how flat the linear step is."""
    try:
        part = decode_rows(df)
    except UsageError:
        return []
    ok = part[part["status"] == "ok"]
    lines = []
    for b, rows in ok.groupby("batch", sort=True):
        lin = rows[rows["family"] == "linear"]
        soft = rows[rows["family"] == "softmax"]
        if lin.empty:
            continue
        name = LINEAR if (lin["mechanism"] == LINEAR).any() else (
            lin.groupby("mechanism")["time_ms"].median().idxmin())
        mine = lin[lin["mechanism"] == name].set_index("seq_len").sort_index()
        if len(mine) > 1:
            t = mine["time_ms"]
            lines.append(f"batch {b}: {name} step {_us(t.min())}..{_us(t.max())} from context "
                         f"{format_size(int(t.index[0]))} to {format_size(int(t.index[-1]))} "
                         f"(slowest / fastest {t.max() / t.min():.3f}), "
                         f"{_n(mine['gbps'].median())} GB/s by its byte model")
        if soft.empty:
            continue
        best = soft.loc[soft.groupby("seq_len")["time_ms"].idxmin()].set_index("seq_len")
        both = sorted(set(best.index) & set(mine.index))
        if not both:
            continue
        faster = [n for n in both if mine.at[n, "time_ms"] < best.at[n, "time_ms"]]
        from_n = next((n for n in both if all(m in faster for m in both if m >= n)), None)
        where = ("at no context measured" if from_n is None else
                 f"from context {format_size(int(from_n))}" + (
                     " (every context measured)" if from_n == both[0] else ""))
        at = [n for n in (REPORTED_CONTEXT, both[-1]) if n in both]
        lines.append(f"batch {b}: {name} decodes faster than the fastest softmax step {where}; "
                     + "; ".join(_against(int(n), mine.loc[n], best.loc[n])
                                 for n in dict.fromkeys(at)))
    return lines


def _against(n: int, mine, soft) -> str:
    """'at 128k 35x (13 us against sdpa-flash 448 us), 4,096 MiB of KV cache against 16 MiB
    of state (256x)'."""
    return (f"at {format_size(n)} {_n(soft['time_ms'] / mine['time_ms'])}x ({_us(mine['time_ms'])}"
            f" against {soft['mechanism']} {_us(soft['time_ms'])}), {_n(soft['cache_mib'])} MiB "
            f"of KV cache against {_n(mine['cache_mib'])} MiB of state "
            f"({_n(soft['cache_mib'] / mine['cache_mib'])}x)")
