"""Time, tokens/s and memory against sequence length: one line per mechanism, log axes.

The one style system of attnbench's figures: ``plot_run`` (every shape and metric of a run)
and the paper's figures (``attnbench.paper``) both draw through the public helpers here:
``styles`` (a colour and marker per mechanism), ``draw_series`` (lines broken where a length
has no measurement, a mark at the top edge for each length that has none), ``finish_axis``
(log axes and readable ticks), ``draw_panel`` (the two together), ``legend_below`` (every
mechanism and every mark drawn), ``suptitle`` and ``save``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.transforms as mtransforms  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from attnbench.case import DEFAULTS, FOLLOWS_LENGTH, SHAPE_COLUMNS, view_columns  # noqa: E402
from attnbench.errors import UsageError  # noqa: E402
from attnbench.records import write_whole  # noqa: E402
from attnbench.sizes import format_size  # noqa: E402

# The file formats every figure can be written in (the CLI validates --format against these).
FORMATS = ("png", "svg", "pdf")
DEFAULT_FORMATS = ("png", "svg")
DPI = 130

PANELS = [("time_ms", "time (ms, median, p20–p80 band)"),
          ("tokens_per_s", "tokens / s"),
          ("extra_mem_mib", "memory above inputs (MiB)")]
# A length without a measurement gets a mark at the top edge of its panel, one row per status
# (top row first, in this order), in the mechanism's colour; the legend explains each mark drawn.
STATUS_MARKS = {"oom": ("x", "out of memory"),
                "timeout": ("$T$", "timed out"),
                "skipped": ("$S$", "skipped: predicted over the time budget"),
                "error": ("$E$", "error"),
                "unsupported": ("$U$", "unsupported")}
_MARK_TOP, _MARK_STEP = 0.97, 0.055  # axes fraction of the first mark row, and between rows
_MARKERS = "osD^v<>ph*"


def styles(mechanisms: Iterable[str], first: Iterable[str] = ()) -> dict[str, dict]:
    """A colour and marker per mechanism: ``first`` in its order (every name of it, present
    or not, so that its colours hold from figure to figure), then the others sorted.

    The ten tab10 colours come first, then their light tints (tab20's odd entries).
    """
    first = list(dict.fromkeys(first))
    names = first + sorted(set(mechanisms) - set(first))
    tab20 = plt.get_cmap("tab20")
    colors = [tab20(i) for i in range(0, 20, 2)] + [tab20(i) for i in range(1, 20, 2)]
    return {m: dict(color=colors[i % len(colors)], marker=_MARKERS[i % len(_MARKERS)])
            for i, m in enumerate(names)}


def never_ran(part: pd.DataFrame) -> dict[str, str]:
    """Mechanisms whose every record in ``part`` is unsupported, with the first reason: the
    figures leave them out of the panels and name them in the title instead."""
    out = {}
    for mech, rows in part.groupby("mechanism", sort=True):
        if (rows["status"] == "unsupported").all():
            out[mech] = rows["reason"].iloc[0]
    return out


def draw_series(ax, part: pd.DataFrame, column: str, style: dict[str, dict], band: bool = False,
                label: Callable[[str], str] = str) -> int:
    """One line per mechanism of ``part`` (one series each); the number of mark rows drawn.

    A line is broken at every length whose record is not ``ok``; such a length gets the
    mark of its status (``STATUS_MARKS``) at the top edge instead. A mechanism that failed its
    correctness check is drawn dashed. ``band`` shades the p20-p80 spread of ``time_ms``.
    """
    statuses = [s for s in STATUS_MARKS if (part["status"] == s).any()]
    for mech, rows in part.groupby("mechanism", sort=True):
        st = style[mech]
        good = (rows["status"] == "ok") & rows[column].notna()
        rows = rows.assign(_good=good).sort_values(["seq_len", "_good"], ascending=[True, False])
        rows = rows.drop_duplicates("seq_len")  # one record per length, a measured one first
        good = rows["_good"]
        if good.any():
            failed = (rows.loc[good, "check"] == "fail").any()
            ax.plot(rows["seq_len"], rows[column].where(good), color=st["color"],
                    marker=st["marker"], markersize=4, linewidth=1.5,
                    linestyle="--" if failed else "-",
                    label=label(mech) + (" (failed check)" if failed else ""))
            if band and column == "time_ms":
                ax.fill_between(rows["seq_len"], rows["time_ms_p20"].where(good),
                                rows["time_ms_p80"].where(good), color=st["color"], alpha=0.2,
                                linewidth=0)
        for i, status in enumerate(statuses):
            mark_top(ax, rows.loc[rows["status"] == status, "seq_len"], i, status, st["color"])
    return len(statuses)


def mark_top(ax, xs, row: int, status: str, color) -> None:
    """``status``'s mark (``STATUS_MARKS``) at each length of ``xs``, in mark row ``row`` at
    the top edge (``finish_axis(marks=...)`` keeps the lines below the rows)."""
    if len(xs):
        top = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(xs, [_MARK_TOP - row * _MARK_STEP] * len(xs), transform=top,
                   marker=STATUS_MARKS[status][0], color=color,
                   s=40 if status == "oom" else 45, linewidths=1.2, clip_on=False)


def finish_axis(ax, seq_lens, values: pd.Series | None = None, big: bool = False,
                marks: int = 0) -> None:
    """Log-log axes: every length a labelled x tick (1k, 2k, ...); on y, decades when
    ``values`` span many, 1-2-5 steps when few, plain numbers (k/M/G when ``big``); headroom
    above the data for ``marks`` rows of status marks, so that no line runs into them."""
    seq_lens = [int(n) for n in seq_lens] or [1024]
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(seq_lens)
    ax.set_xticklabels([format_size(n) for n in seq_lens], rotation=45, fontsize=8)
    ax.minorticks_off()
    ax.set_xlim(min(seq_lens) / 1.25, max(seq_lens) * 1.25)  # also where no line sets it
    ax.grid(True, which="major", alpha=0.3)
    values = pd.Series([] if values is None else values, dtype="float64").dropna()
    values = values[values > 0]
    if len(values) == 0:
        ax.set_yticks([])
        return
    lo, hi = values.min(), values.max()
    decades = math.log10(hi / lo)
    # a narrow range still shows labels across it: finer steps under half a decade, even
    # steps under a factor of 1.25 (a flat line's 0.98..1.00)
    subs = ((1.0,) if decades > 2.5 else (1.0, 2.0, 5.0) if decades > 0.8
            else (1, 2, 3, 5, 7) if decades > 0.45 else (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs) if decades > 0.1
                               else MaxNLocator(nbins=4))
    ax.yaxis.set_major_formatter(FuncFormatter(number if big else lambda y, _p: f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    if marks:
        # in log space: 5% below the data, the mark rows and a gap above it
        above = 1 - _MARK_TOP + marks * _MARK_STEP + 0.02
        total = max(math.log(hi / lo), math.log(10)) / (1 - 0.05 - above)
        ax.set_ylim(lo * math.exp(-0.05 * total), hi * math.exp(above * total))


def draw_panel(ax, part: pd.DataFrame, column: str, style: dict[str, dict], seq_lens,
               band: bool = False, label: Callable[[str], str] = str,
               empty: str = "no measurement") -> int:
    """``draw_series`` then ``finish_axis`` on what it drew (k/M/G ticks for tokens/s); a
    panel with no measured value says ``empty`` in its middle. Returns the mark rows drawn."""
    marks = draw_series(ax, part, column, style, band=band, label=label)
    ok = part[part["status"] == "ok"]
    values = ok[column].dropna()
    spread = ok[["time_ms_p20", "time_ms_p80"]].stack() if band and column == "time_ms" else []
    finish_axis(ax, seq_lens, pd.concat([values, pd.Series(spread, dtype="float64")]),
                big=column == "tokens_per_s", marks=marks)
    if len(values) == 0:
        ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="0.4")
    return marks


def number(y: float, _pos=None) -> str:
    """1.5k, 20M, 3G: a tick label or a number in a sentence."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if y >= div:
            return f"{y / div:.3g}{suffix}"
    return f"{y:.3g}"


def status_handle(status: str, whose: str = "") -> Line2D:
    """A legend entry for ``status``'s top-edge mark ('out of memory (top edge)'), ``whose``
    before it ('paper: ')."""
    marker, text = STATUS_MARKS[status]
    return Line2D([], [], color="0.3", marker=marker, linestyle="none", markersize=7,
                  label=f"{whose}{text} (top edge)")


def legend_below(fig, part: pd.DataFrame, style: dict[str, dict],
                 label: Callable[[str], str] = str, ncol: int = 3, extra=()) -> None:
    """One legend in a strip under the panels (never over data): every mechanism of ``part``
    in the order of ``style`` (dashed where it failed its check), the mark of every status
    ``part`` holds, then ``extra`` handles; then the panels are laid out above it."""
    handles = []
    for mech in (m for m in style if m in set(part["mechanism"])):
        rows = part[part["mechanism"] == mech]
        failed = ((rows["status"] == "ok") & (rows["check"] == "fail")).any()
        handles.append(Line2D([], [], color=style[mech]["color"], marker=style[mech]["marker"],
                              markersize=5, linestyle="--" if failed else "-",
                              label=label(mech) + (" (failed check)" if failed else "")))
    handles += [status_handle(s) for s in STATUS_MARKS if (part["status"] == s).any()]
    handles += list(extra)
    bottom = 0.0
    renderer = fig.canvas.get_renderer()
    for n in range(min(len(handles), ncol), 0, -1):  # as many columns as fit the width
        legend = fig.legend(handles=handles, loc="lower center", ncol=n, fontsize=9,
                            frameon=False, bbox_to_anchor=(0.5, 0.0))
        box = legend.get_window_extent(renderer)
        if box.width <= 0.98 * fig.bbox.width or n == 1:
            bottom = box.height / fig.bbox.height + 0.01
            break
        legend.remove()
    fig.tight_layout(rect=(0, bottom, 1, 1))


def suptitle(fig, lines: Iterable[str], width: int = 120) -> None:
    """The figure's title: each line wrapped at ``width`` characters."""
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in lines if line), fontsize=11)


def shape_text(row) -> str:
    """'batch 4, heads 32, head dim 128, bf16' from the shape columns of a record (decay is a
    property of each mechanism; the value dim is named only where it differs; a field with a
    default, such as a training step's model, only where the record has another value; not
    a field that follows the length, such as a training step's batch)."""
    words = []
    for col in SHAPE_COLUMNS:
        if col == "decay" or (col == "value_dim" and row[col] == row["head_dim"]):
            continue
        if col in DEFAULTS and row.get(col, DEFAULTS[col]) == DEFAULTS[col]:
            continue
        if col in FOLLOWS_LENGTH.get(row.get("mode"), ()):  # a training step's batch
            continue
        words.append(str(row[col]) if col == "dtype" else f"{col.replace('_', ' ')} {row[col]}")
    return ", ".join(words)


def save(fig, out_dir: Path, stem: str, formats=DEFAULT_FORMATS) -> list[Path]:
    """Write ``fig`` as ``out_dir/stem.<format>`` for each format, close it; the paths."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown format {bad[0]!r}; choose from {', '.join(FORMATS)}")
    paths = [Path(out_dir) / f"{stem}.{fmt}" for fmt in formats]
    try:
        for path, fmt in zip(paths, formats):
            try:  # whole or not at all: a full disk leaves no empty figure behind
                write_whole(path, lambda p, fmt=fmt: fig.savefig(p, dpi=DPI, format=fmt))
            except OSError as exc:
                raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return paths


def plot_run(df: pd.DataFrame, out_dir: Path, title: str,
             formats=DEFAULT_FORMATS) -> list[Path]:
    """One figure per shape (``SHAPE_COLUMNS`` but decay): modes x metrics panels."""
    device = df["device"].iloc[0]
    panels = [p for p in PANELS if not (device == "cpu" and p[0] == "extra_mem_mib")]
    style = styles(df["mechanism"].unique())
    varying = [c for c in view_columns(df)[0] if c != "decay"]
    paths = []
    for key, part in df.groupby(varying, sort=True) if varying else [((), df)]:
        key = key if isinstance(key, tuple) else (key,)
        absent = never_ran(part)
        if len(absent) < part["mechanism"].nunique():  # else draw their marks: nothing else
            part = part[~part["mechanism"].isin(absent)]
        else:
            absent = {}
        modes = list(dict.fromkeys(part["mode"]))
        seq_lens = sorted(part["seq_len"].unique())
        fig, axes = plt.subplots(len(modes), len(panels), squeeze=False,
                                 figsize=(4.6 * len(panels), 3.6 * len(modes) + 1.0))
        for i, mode in enumerate(modes):
            sub = part[part["mode"] == mode]
            for j, (column, text) in enumerate(panels):
                ax = axes[i][j]
                draw_panel(ax, sub, column, style, seq_lens, band=True)
                ax.set_title(f"{mode}: {text}", fontsize=10)
                if i == len(modes) - 1:
                    ax.set_xlabel("sequence length")
        notes = [title, f"{shape_text(part.iloc[0])}, {device}"]
        if absent:
            notes.append("not run: " + "; ".join(f"{m} ({why or 'unsupported'})"
                                                 for m, why in absent.items()))
        suptitle(fig, notes, width=40 * len(panels))
        legend_below(fig, part, style, ncol=6)
        suffix = "-".join(f"{c}{v}" for c, v in zip(varying, key))
        paths += save(fig, out_dir, "sweep" + (f"-{suffix}" if suffix else ""), formats)
    return paths
