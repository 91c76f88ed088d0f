"""Training speed against length (``attnbench tgs`` records) beside the paper's Table 1.

``attnbench/data/tgs_table1.csv`` holds Table 1 of the Lightning Attention-2 paper (TGS, tokens
per GPU per second, on 2x A100 80G; see attnbench/data/README.md). Our GPUs differ from the
paper's, so lines are compared by shape: each divided by its TGS at its shortest measured
length (1K in the paper and in the GPU defaults). Our absolute numbers are drawn beside.

A line is one model with one attention mechanism at one size. Ours are the run's ``train``
records; the paper's three lines map to ours through ``PAPER_LINES``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from attnbench import modes
from attnbench.paper.selection import lengths
from attnbench.plots import (
    draw_panel,
    finish_axis,
    legend_below,
    mark_top,
    number,
    plt,
    status_handle,
    styles,
    suptitle,
)
from attnbench.sizes import format_size

TABLE1_CSV = Path(__file__).resolve().parents[1] / "data" / "tgs_table1.csv"
# The paper's (model, attention) -> ours (model, mechanism); its sizes -> our presets.
PAPER_LINES = {("LLaMA", "FlashAttention-2"): ("llama", "flash2"),
               ("TNL", "Lightning-1"): ("tnl", "lightning1"),
               ("TNL", "Lightning-2"): ("tnl", "lightning2")}
PAPER_SIZES = {"0.4B": "0.4b", "1B": "1b", "3B": "3b"}
MODEL_NAMES = {"llama": "LLaMA", "tnl": "TNL"}
SHORT = {"flash2": "FA2", "lightning1": "LA1", "lightning2": "LA2"}  # the paper's line names
# The pair whose ratio the paper quotes (TNL-LA2 / LLaMA-FA2), ours by mechanism.
RATIO_PAIR = ("lightning2", "flash2")
COLUMNS = ["source", "model", "size", "mechanism", "seq_len", "status", "tgs", "relative"]


def line_name(model: str, mechanism: str) -> str:
    """'TNL-LA2 (lightning2)', 'LLaMA-sdpa-cudnn': a line in a legend or a sentence."""
    short = SHORT.get(mechanism)
    return f"{MODEL_NAMES.get(model, model)}-{short} ({mechanism})" if short else \
        f"{MODEL_NAMES.get(model, model)}-{mechanism}"


def _relative(lines: pd.DataFrame) -> pd.DataFrame:
    """Adds ``relative``: each line's TGS over its TGS at its shortest measured length."""
    keys = ["source", "model", "size", "mechanism"]
    ok = lines[lines["status"] == "ok"].sort_values("seq_len")
    first = ok.groupby(keys)["tgs"].first().rename("first")
    lines = lines.join(first, on=keys)
    return lines.assign(relative=lines["tgs"] / lines["first"]).drop(columns="first")


def paper_table1() -> pd.DataFrame:
    """Table 1 of the paper as lines (``COLUMNS``; source "paper", our names; OOM: tgs NaN)."""
    raw = pd.read_csv(TABLE1_CSV, comment="#", dtype={"tgs": str})
    ours = [PAPER_LINES[(m, a)] for m, a in zip(raw["model"], raw["attention"])]
    table = pd.DataFrame(dict(
        source="paper", model=[o[0] for o in ours], size=raw["params"].map(PAPER_SIZES),
        mechanism=[o[1] for o in ours], seq_len=raw["seq_len"].astype(int),
        status=np.where(raw["tgs"] == "OOM", "oom", "ok"),
        tgs=pd.to_numeric(raw["tgs"], errors="coerce")))
    return _relative(table)[COLUMNS]


def our_lines(df: pd.DataFrame) -> pd.DataFrame:
    """The run's training-step records as lines (``COLUMNS``; source "ours"; tgs = tokens/s
    of one GPU where the status is ok, else NaN)."""
    train = modes.rows(df, modes.TRAIN)
    lines = pd.DataFrame(dict(
        source="ours", model=train["model"], size=train["size"], mechanism=train["mechanism"],
        seq_len=train["seq_len"].astype(int), status=train["status"],
        tgs=train["tokens_per_s"].where(train["status"] == "ok")))
    return _relative(lines.reset_index(drop=True))[COLUMNS]


def paper_size_for(size: str) -> str:
    """The paper's size our ``size`` is compared with: the same, or 0.4B for ours alone
    (tiny)."""
    return size if size in PAPER_SIZES.values() else "0.4b"


def tgs_table(df: pd.DataFrame) -> pd.DataFrame:
    """Our lines and the paper's at the same sizes, long (``COLUMNS``)."""
    ours = our_lines(df)
    sizes = {paper_size_for(s) for s in ours["size"].unique()}
    paper = paper_table1()
    return pd.concat([ours, paper[paper["size"].isin(sizes)]], ignore_index=True)


def _style(mechanisms) -> dict:
    return styles(mechanisms, first=("flash2", "lightning1", "lightning2", "sdpa-cudnn"))


def tgs_figure(df: pd.DataFrame, title: str = ""):
    """Per size of the run: TGS relative to each line's shortest length, ours (solid) beside
    the paper's (dashed); and our absolute TGS (log axes; out of memory and skipped lengths
    marked at the top edge)."""
    train = modes.rows(df, modes.TRAIN)
    if train.empty:
        raise ValueError("no training-step records (mode train): run attnbench tgs")
    ours, paper = our_lines(df), paper_table1()
    sizes = sorted(train["size"].unique())
    style = _style(set(train["mechanism"]) | {m for _, m in PAPER_LINES.values()})
    fig, axes = plt.subplots(len(sizes), 2, figsize=(12, 4.8 * len(sizes) + 1.2), squeeze=False)
    for (rel_ax, abs_ax), size in zip(axes, sizes):
        part = train[train["size"] == size]
        mine = ours[ours["size"] == size]
        theirs = paper[paper["size"] == paper_size_for(size)]
        rel = part.assign(relative=mine["relative"].to_numpy())
        # ticks: our lengths and the paper's powers of two (its 80K and 92K would crowd 64K)
        seq_lens = sorted(set(part["seq_len"]) | {n for n in theirs["seq_len"] if not n & (n - 1)})
        marks = draw_panel(rel_ax, rel, "relative", style, sorted(part["seq_len"].unique()),
                           label=lambda m, p=part: line_name(
                               p.loc[p["mechanism"] == m, "model"].iloc[0], m))
        for mech, rows in theirs.groupby("mechanism"):
            ok = rows[rows["status"] == "ok"]
            rel_ax.plot(ok["seq_len"], ok["relative"], color=style[mech]["color"],
                        linestyle="--", marker=style[mech]["marker"], markersize=3,
                        markerfacecolor="none", linewidth=1.2)
            # the paper's out of memory: a row of marks below ours
            mark_top(rel_ax, rows.loc[rows["status"] == "oom", "seq_len"], marks, "oom",
                     style[mech]["color"])
        values = pd.concat([mine["relative"], theirs["relative"]]).dropna()
        finish_axis(rel_ax, seq_lens, values,
                    marks=marks + (theirs["status"] == "oom").any())
        every = set(part["seq_len"]) | set(theirs["seq_len"])
        rel_ax.set_xlim(min(every) / 1.25, max(every) * 1.25)
        rel_ax.axhline(1.0, color="0.5", linewidth=0.8, linestyle=":")
        rel_ax.set_title(f"{size}: TGS / TGS at the line's shortest length\nsolid: ours; "
                         f"dashed: the paper's {_paper_size_name(size)}", fontsize=10)
        draw_panel(abs_ax, part, "tokens_per_s", style, sorted(part["seq_len"].unique()))
        abs_ax.set_title(f"{size}: ours, tokens per GPU per second", fontsize=10)
        for ax in (rel_ax, abs_ax):
            ax.set_xlabel("sequence length")
    device = train["device"].iloc[0]
    notes = ["training speed against length (TGS)" + (f" - {title}" if title else ""),
             f"{device}, {train['dtype'].iloc[0]}, {_steps_by_size(train)}"
             + (", activation checkpointing" if train["checkpointing"].any() else ""),
             *stand_in_notes(train)]
    suptitle(fig, notes, width=110)
    labels = {m: line_name(train.loc[train["mechanism"] == m, "model"].iloc[0], m)
              for m in train["mechanism"].unique()}
    from matplotlib.lines import Line2D

    shown = paper[paper["size"].isin({paper_size_for(s) for s in sizes})]
    paper_handles = [Line2D([], [], color=style[m]["color"], linestyle="--",
                            marker=style[m]["marker"], markerfacecolor="none", markersize=4,
                            label=f"paper: {line_name(model, m)}")
                     for model, m in PAPER_LINES.values() if m in set(shown["mechanism"])]
    if (shown["status"] == "oom").any():
        paper_handles.append(status_handle("oom", "paper: "))
    legend_below(fig, train, style, label=lambda m: labels.get(m, m), ncol=4,
                 extra=paper_handles)
    return fig


def tokens_per_step_text(train: pd.DataFrame) -> str:
    """'128k tokens per step', the step most lengths take, and the lengths whose step holds
    another number: one sequence (80k and 92k at 128k tokens a step; a length above the
    tokens per step), or the batch that fits (96k at 32k for 100k tokens a step)."""
    tokens = train["batch"] * train["seq_len"]
    counts = tokens.value_counts()
    step = int(counts[counts == counts.max()].index.max())
    other = train[tokens != step].drop_duplicates("seq_len").sort_values("seq_len")
    text = f"{format_size(step)} tokens per step"
    if other.empty:
        return text
    if (other["batch"] == 1).all():
        return text + f" (one sequence at {', '.join(map(format_size, other['seq_len']))})"
    return text + " (" + ", ".join(f"{format_size(int(b * n))} at {format_size(int(n))}"
                                   for b, n in zip(other["batch"], other["seq_len"])) + ")"


def _steps_by_size(train: pd.DataFrame) -> str:
    """``tokens_per_step_text`` of each size, where a figure's sizes step differently ('0.4b,
    1b: 128k tokens per step (...); 3b: 32k tokens per step')."""
    sizes: dict[str, list[str]] = {}
    for size, rows in train.groupby("size", sort=True):
        sizes.setdefault(tokens_per_step_text(rows), []).append(size)
    if len(sizes) == 1:
        return next(iter(sizes))
    return "; ".join(f"{', '.join(names)}: {text}" for text, names in sizes.items())


def stand_in_notes(train: pd.DataFrame) -> list[str]:
    """'flash2 ran torch ... SDPA flash (FlashAttention 2.5.7)': a line for each mechanism
    of the run that ran as another implementation (flash2 without flash-attn installed)."""
    ran = train[train["impl"].fillna("").str.contains("SDPA")] if "impl" in train else train[:0]
    return [f"{mech} ran {impl}" for mech, impl in
            ran.groupby("mechanism", sort=True)["impl"].first().items()]


def _paper_size_name(size: str) -> str:
    name = {v: k for k, v in PAPER_SIZES.items()}[paper_size_for(size)]
    return f"{name} (2x A100" + (")" if size in PAPER_SIZES.values() else
                                 f"; the paper has no {size} model)")


def _flatness(rows: pd.DataFrame) -> str:
    ok = rows[rows["status"] == "ok"].sort_values("seq_len")
    first, last = ok.iloc[0], ok.iloc[-1]
    text = (f"{number(first['tgs'])} TGS at {format_size(int(first['seq_len']))}, "
            f"{number(last['tgs'])} at {format_size(int(last['seq_len']))} "
            f"({last['relative']:.0%} of its {format_size(int(first['seq_len']))} value; "
            f"{ok['relative'].min():.2f}..{ok['relative'].max():.2f} over "
            f"{lengths(ok['seq_len'])})")
    failed = rows[rows["status"] != "ok"]
    if len(failed):
        by_status = failed.groupby("status")["seq_len"].min()
        text += "; " + ", ".join(f"{status} from {format_size(int(n))}"
                                 for status, n in by_status.items())
    return text


def _ratios(lines: pd.DataFrame, num: tuple, den: tuple) -> str:
    a = lines[(lines["model"] == num[0]) & (lines["mechanism"] == num[1])].set_index("seq_len")
    b = lines[(lines["model"] == den[0]) & (lines["mechanism"] == den[1])].set_index("seq_len")
    both = (a["tgs"] / b["tgs"]).dropna().sort_index()
    return ", ".join(f"{r:.2f}x at {format_size(int(n))}" for n, r in both.items())


def _versus(mine: pd.DataFrame, train: pd.DataFrame, size: str) -> list[str]:
    """TNL with lightning2 against TNL with each other mechanism of the run, at every length
    both ran: the ratios, and where lightning2 is behind or level (the two steps' p20..p80
    time bands overlap, so the median's order is noise) out of ``train``, the size's
    records."""
    tnl = mine[mine["model"] == "tnl"]
    if "lightning2" not in set(tnl["mechanism"]):
        return []
    ours = tnl[tnl["mechanism"] == "lightning2"].set_index("seq_len")["tgs"]
    ok = train[(train["model"] == "tnl") & (train["status"] == "ok")]
    band = ok.set_index(["mechanism", "seq_len"])[["time_ms_p20", "time_ms_p80"]]
    out = []
    for other in sorted(set(tnl["mechanism"]) - {"lightning2"}):
        both = (ours / tnl[tnl["mechanism"] == other].set_index("seq_len")["tgs"]).dropna()
        if both.empty:
            continue
        level, behind = [], []
        for n, ratio in both.sort_index().items():
            a, b = band.loc[("lightning2", n)], band.loc[(other, n)]
            if a["time_ms_p20"] <= b["time_ms_p80"] and b["time_ms_p20"] <= a["time_ms_p80"]:
                level.append(format_size(int(n)))
            elif ratio < 1:
                behind.append(format_size(int(n)))
        parts = ([f"level at {', '.join(level)} (p20..p80 of the step times overlap)"]
                 if level else []) + ([f"behind at {', '.join(behind)}"] if behind else [])
        if not parts:
            verdict = "ahead at every length both ran"
        else:
            ahead = len(both) - len(level) - len(behind)
            verdict = "; ".join(parts) + (", ahead at the others" if ahead else "")
        out.append(f"ours, {line_name('tnl', 'lightning2')} / {line_name('tnl', other)} at "
                   f"{size}: {_ratios(mine, ('tnl', 'lightning2'), ('tnl', other))}; "
                   f"{verdict}.")
    return out


def memory_findings(df: pd.DataFrame) -> list[str]:
    """Per size and line of the run: the longest length that ran, with its memory above the
    model and its optimizer state and its peak, and what the first length out of memory
    needed at least (where its record says)."""
    train = modes.rows(df, modes.TRAIN)
    out = []
    for (size, model, mech), rows in train.groupby(["size", "model", "mechanism"], sort=True):
        rows = rows.sort_values("seq_len")
        ok = rows[rows["status"] == "ok"]
        if ok.empty:
            continue
        last = ok.iloc[-1]
        oom = rows[(rows["status"] == "oom") & (rows["seq_len"] > last["seq_len"])]
        longest = format_size(int(last["seq_len"]))
        text = f"ours, {line_name(model, mech)} {size}: " + (
            f"runs to {longest}" if len(oom) else f"fits at every length it ran, to {longest}")
        if last["peak_mem_mib"] == last["peak_mem_mib"]:  # not on the CPU (no allocator stats)
            text += (f" ({last['extra_mem_mib'] / 1024:.1f} GiB above the model and its "
                     f"optimizer state, {last['peak_mem_mib'] / 1024:.1f} GiB at its peak)")
        if len(oom):
            first = oom.iloc[0]
            need = first.get("peak_mem_mib", float("nan"))
            text += (f"; out of memory at {format_size(int(first['seq_len']))}"
                     + (f" (needed more than {need / 1024:.1f} GiB)" if need == need else ""))
        out.append(text + ".")
    return out


def tgs_findings(df: pd.DataFrame) -> list[str]:
    """What the TGS figure shows, one sentence per line (ours, then the paper's at the same
    size), TNL-LA2 against the run's other TNL lines, TNL / LLaMA at each length (ours and
    the paper's), and how far each line of ours reaches in memory."""
    table, train = tgs_table(df), modes.rows(df, modes.TRAIN)
    out = []
    for size in sorted(table.loc[table["source"] == "ours", "size"].unique()):
        mine = table[(table["source"] == "ours") & (table["size"] == size)]
        theirs = table[(table["source"] == "paper") & (table["size"] == paper_size_for(size))]
        for (model, mech), rows in mine.groupby(["model", "mechanism"], sort=True):
            if (rows["status"] == "ok").any():
                out.append(f"ours, {line_name(model, mech)} {size}: {_flatness(rows)}.")
            else:
                reasons = ", ".join(sorted(set(rows["status"])))
                out.append(f"ours, {line_name(model, mech)} {size}: no measurement ({reasons}).")
        for (model, mech), rows in theirs.groupby(["model", "mechanism"], sort=True):
            out.append(f"the paper's {line_name(model, mech)} {_paper_size_name(size)}: "
                       f"{_flatness(rows)}.")
        tnl = sorted(set(mine.loc[mine["model"] == "tnl", "mechanism"]))
        llama = sorted(set(mine.loc[mine["model"] == "llama", "mechanism"]))
        if tnl and llama:
            num = RATIO_PAIR[0] if RATIO_PAIR[0] in tnl else tnl[0]
            den = RATIO_PAIR[1] if RATIO_PAIR[1] in llama else llama[0]
            ratios = _ratios(mine, ("tnl", num), ("llama", den))
            out.append(f"ours, {line_name('tnl', num)} / {line_name('llama', den)} TGS at "
                       f"{size}: {ratios or 'no length where both ran'}.")
        out.append(f"the paper's TNL-LA2 / LLaMA-FA2 at {_paper_size_name(size)}: "
                   f"{_ratios(theirs, ('tnl', 'lightning2'), ('llama', 'flash2'))}.")
        out += _versus(mine, train[train["size"] == size], size)
    return out + memory_findings(df)
