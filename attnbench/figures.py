"""The Lightning Attention-2 paper's figures, redrawn from a run's records.

``paper_kernels`` is the kernel figure (Fig. 3 of arXiv 2401.04658v2: runtime and memory of
forward and backward against sequence length), ``tokens_per_second`` is tokens/s of every
mechanism in the run, ``findings`` turns the same data into sentences, and
``official_comparison`` sets our times beside the official repository's published ones
(``attnbench/data/official_repo_operator_ms.csv``). Each takes the tidy frame of
``attnbench.records.load``; notebooks and ``attnbench plot --figure`` only call these.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from attnbench.plots import _finish_axis, draw_series, plt
from attnbench.sizes import format_size

# The paper's mechanisms, in the paper's order, with the names its figures use.
PAPER_MECHANISMS = ("lightning1", "flash2", "lightning2", "linear-masked", "linear-cumsum")
PAPER_NAMES = {"lightning1": "Lightning-1", "flash2": "FlashAttention-2",
               "lightning2": "Lightning-2", "linear-masked": "Vanilla",
               "linear-cumsum": "naive cumsum"}
PAPER_COLORS = {"lightning1": "tab:blue", "flash2": "tab:orange", "lightning2": "tab:green",
                "linear-masked": "tab:purple", "linear-cumsum": "tab:brown"}
# The "paper" preset: the official repository's benchmark shape (the paper states none).
PAPER_SHAPE = {"batch": 4, "heads": 32, "head_dim": 128, "dtype": "bf16"}
SHAPE_KEYS = tuple(PAPER_SHAPE)
# Their names -> ours, for the official README's operator timings.
OFFICIAL_NAMES = {"Lightning-2": "lightning2", "FlashAttention-2": "flash2",
                  "xformers": "xformers"}
OFFICIAL_CSV = Path(__file__).parent / "data" / "official_repo_operator_ms.csv"
MODE_WORDS = {"fwd": "forward", "bwd": "backward", "fwdbwd": "forward+backward"}
FLAT_FROM = 4096  # tokens/s flatness is judged from here up (below, launch overheads rule)


# --- selecting what to draw ----------------------------------------------------------------


def name(mech: str) -> str:
    """The label of a mechanism: the paper's name with ours beside it, or just ours."""
    return f"{PAPER_NAMES[mech]} ({mech})" if mech in PAPER_NAMES else mech


def short(mech: str) -> str:
    return PAPER_NAMES.get(mech, mech)


def one_shape(df: pd.DataFrame, shape: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """The rows of one (batch, heads, head dim, dtype): ``shape`` if given, else the paper's
    when the run has it, else the shape with the most records. Where a mechanism ran both
    with and without decay, its decay rows are kept (the paper's kernels decay)."""
    if shape is None:
        shapes = df.groupby(list(SHAPE_KEYS)).size().sort_values(ascending=False)
        paper = tuple(PAPER_SHAPE.values())
        shape = dict(zip(SHAPE_KEYS, paper if paper in shapes.index else shapes.index[0]))
    mask = np.logical_and.reduce([df[k] == v for k, v in shape.items()])
    part = df[mask]
    both = part.groupby("mechanism")["decay"].transform("nunique") > 1
    part = part[~both | part["decay"]]
    return part, {k: (v.item() if hasattr(v, "item") else v) for k, v in shape.items()}


def shape_text(part: pd.DataFrame, shape: dict) -> str:
    device = part["device"].iloc[0] if len(part) else "?"
    return (f"batch {shape['batch']}, heads {shape['heads']}, head dim {shape['head_dim']}, "
            f"{shape['dtype']}, causal, {device}")


def run_title(run_dir: Path) -> str:
    """``<run name>: <GPU>`` from the run's meta.json, for figure titles."""
    from attnbench.records import read_meta

    env = read_meta(run_dir).get("environment", {})
    return f"{Path(run_dir).name}: {env.get('gpu') or 'CPU'}"


def resolve_run_dir(run_dir: str | Path, start: Path | None = None) -> Path:
    """A notebook's RUN_DIR as an absolute path. ``$ATTNBENCH_RUN_DIR`` overrides it; a
    relative path is taken from the repository root: the first of ``start`` (default: the
    working directory) and its parents that holds pyproject.toml and attnbench/, else the
    checkout this package is imported from."""
    run_dir = Path(os.environ.get("ATTNBENCH_RUN_DIR") or run_dir).expanduser()
    if run_dir.is_absolute():
        return run_dir
    return repo_root(start) / run_dir


def repo_root(start: Path | None = None) -> Path:
    start = Path(start or Path.cwd()).resolve()
    for path in (start, *start.parents, Path(__file__).resolve().parents[1]):
        if (path / "pyproject.toml").is_file() and (path / "attnbench").is_dir():
            return path
    raise FileNotFoundError(f"no attnbench checkout above {start}")


# --- drawing helpers -------------------------------------------------------------------------


def _number(y: float, _pos=None) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if y >= div:
            return f"{y / div:.3g}{suffix}"
    return f"{y:g}"


def _style(mechanisms) -> dict[str, dict]:
    """Fixed colours for the paper's mechanisms, the rest of tab10/tab20 for the others."""
    others = [m for m in sorted(mechanisms) if m not in PAPER_COLORS]
    cmap = plt.get_cmap("tab10" if len(others) <= 5 else "tab20")
    free = [cmap(i) for i in range(cmap.N) if cmap(i) not in
            [plt.matplotlib.colors.to_rgba(c) for c in PAPER_COLORS.values()]]
    markers = "osD^v<>ph*"
    style = {name(m): dict(color=PAPER_COLORS[m], marker=markers[i])
             for i, m in enumerate(PAPER_MECHANISMS)}
    for i, m in enumerate(others):
        style[name(m)] = dict(color=free[i % len(free)], marker=markers[(i + 5) % len(markers)])
    return style


def _order(mechanisms) -> list[str]:
    mechanisms = set(mechanisms)
    return ([m for m in PAPER_MECHANISMS if m in mechanisms]
            + sorted(mechanisms - set(PAPER_MECHANISMS)))


def _draw(ax, part: pd.DataFrame, column: str, style: dict, seq_lens, big: bool) -> None:
    """draw_series on paper labels, then log-log axes with readable ticks."""
    draw_series(ax, part.assign(mechanism=part["mechanism"].map(name)), column, style,
                band=column == "time_ms")
    _finish_axis(ax, seq_lens)
    ax.set_xlim(min(seq_lens) / 1.25, max(seq_lens) * 1.25)  # also where no line sets it
    values = part.loc[part["status"] == "ok", column]
    _log_ticks(ax, values, big)
    values = values[values > 0]
    if (part["status"] == "oom").any() and len(values):
        lo, hi = values.min(), values.max()  # headroom: no line runs into the OOM marks
        span = max(hi / lo, 10.0)
        ax.set_ylim(lo / span**0.05, hi * span**0.15)


def _log_ticks(ax, values: pd.Series, big: bool) -> None:
    """Decades when the data span many, 1-2-5 steps when few; plain numbers (k/M/G if big)."""
    values = values.dropna()
    values = values[values > 0]
    if len(values) == 0:
        ax.set_yticks([])
        return
    decades = math.log10(values.max() / values.min())
    subs = (1.0,) if decades > 2.5 else (1.0, 2.0, 5.0) if decades > 0.8 else np.arange(1, 10)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(_number if big else lambda y, _p: f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _lines_of(notes: list[str], width: int = 120) -> str:
    return "\n".join(textwrap.fill(note, width) for note in notes)


def _legend(fig, part: pd.DataFrame, style: dict) -> None:
    """One legend under the panels (never over data): every mechanism drawn, and the OOM x."""
    handles = []
    for m in _order(part["mechanism"].unique()):
        rows = part[part["mechanism"] == m]
        failed = ((rows["status"] == "ok") & (rows["check"] == "fail")).any()
        st = style[name(m)]
        handles.append(Line2D([], [], color=st["color"], marker=st["marker"], markersize=5,
                              linestyle="--" if failed else "-",
                              label=name(m) + (" (failed check)" if failed else "")))
    if (part["status"] == "oom").any():
        handles.append(Line2D([], [], color="0.3", marker="x", linestyle="none",
                              label="out of memory (x at the top edge)"))
    _legend_below(fig, handles, ncol=3)


def _legend_below(fig, handles, ncol: int) -> None:
    """The legend in a strip under the panels, sized to what it holds, never over data."""
    bottom = 0.0
    if handles:
        legend = fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), ncol),
                            fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.0))
        height = legend.get_window_extent(fig.canvas.get_renderer()).height
        bottom = height / fig.bbox.height + 0.01
    fig.tight_layout(rect=(0, bottom, 1, 1))


def _gaps(part: pd.DataFrame, modes) -> list[str]:
    """'Lightning-1 fwd from 64k: skipped': lengths with neither a point nor an OOM mark."""
    out = []
    for m in _order(part["mechanism"].unique()):
        for mode in modes:
            rows = part[(part["mechanism"] == m) & (part["mode"] == mode)].sort_values("seq_len")
            gone = rows[~rows["status"].isin(["ok", "oom"])]
            if len(gone):
                first = format_size(gone["seq_len"].min())
                where = "" if len(gone) == len(rows) else f" from {first}"
                out.append(f"{short(m)} {mode}{where}: {', '.join(sorted(set(gone['status'])))}")
    return out


# --- the figures -----------------------------------------------------------------------------


def paper_kernels(df: pd.DataFrame, memory: str = "peak_mem_mib", title: str = "",
                  shape: dict | None = None):
    """Fig. 3 of the paper: runtime and memory of forward and backward against length.

    Four log-log panels (forward/backward runtime in ms, forward/backward peak memory in MiB,
    inputs included as the paper's figure counts them; ``memory="extra_mem_mib"`` for the
    part above the inputs) for the paper's mechanisms found in the run; OOM lengths are an x
    at the top edge. A mechanism the run lacks is named in the title, never drawn empty.
    """
    part, shape = one_shape(df, shape)
    present = [m for m in PAPER_MECHANISMS if m in set(part["mechanism"])]
    missing = [m for m in PAPER_MECHANISMS if m not in present]
    seq_lens = sorted(part["seq_len"].unique()) or [1024]
    part = part[part["mechanism"].isin(present)]
    style = _style(present)
    mem_label = "peak memory" if memory == "peak_mem_mib" else "memory above inputs"
    panels = [("fwd", "time_ms", "forward: runtime (ms)"),
              ("bwd", "time_ms", "backward: runtime (ms)"),
              ("fwd", memory, f"forward: {mem_label} (MiB)"),
              ("bwd", memory, f"backward: {mem_label} (MiB)")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 9))
    for ax, (mode, column, label) in zip(axes.flat, panels):
        sub = part[part["mode"] == mode]
        _draw(ax, sub, column, style, seq_lens, big=False)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("sequence length")
        if not (sub["status"] == "ok").any() or sub.loc[sub["status"] == "ok", column].isna().all():
            why = ("memory is not measured on the CPU" if column != "time_ms"
                   and (sub["device"] == "cpu").all() and len(sub) else f"no {mode} records")
            ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center",
                    color="0.4")
    notes = [shape_text(part, shape)]
    if missing:
        notes.append("not in this run: " + ", ".join(name(m) for m in missing))
    gaps = _gaps(part, ("fwd", "bwd"))
    if gaps:
        notes.append("not measured (not OOM): " + "; ".join(gaps))
    head = "Lightning Attention-2 paper, Fig. 3: kernel runtime and memory"
    fig.suptitle(_lines_of([head + (f" - {title}" if title else ""), *notes]), fontsize=11)
    _legend(fig, part, style)
    return fig


def tokens_per_second(df: pd.DataFrame, title: str = "", shape: dict | None = None):
    """Tokens/s against length for every mechanism in the run, one panel per mode."""
    part, shape = one_shape(df, shape)
    modes = [m for m in ("fwd", "bwd", "fwdbwd") if m in set(part["mode"])] or ["fwd"]
    style = _style(part["mechanism"].unique())
    seq_lens = sorted(part["seq_len"].unique()) or [1024]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 5.2), squeeze=False)
    for ax, mode in zip(axes.flat, modes):
        _draw(ax, part[part["mode"] == mode], "tokens_per_s", style, seq_lens, big=True)
        ax.set_title(f"{MODE_WORDS[mode]}: tokens / s (batch x length / time)", fontsize=10)
        ax.set_xlabel("sequence length")
    notes = [shape_text(part, shape)]
    gaps = _gaps(part, modes)
    if gaps:
        notes.append("not measured (not OOM): " + "; ".join(gaps))
    head = "tokens per second against sequence length"
    fig.suptitle(_lines_of([head + (f" - {title}" if title else ""), *notes]), fontsize=11)
    _legend(fig, part, style)
    return fig


# --- findings --------------------------------------------------------------------------------


def _series(part: pd.DataFrame, mech: str, mode: str, column: str) -> pd.Series:
    rows = part[(part["mechanism"] == mech) & (part["mode"] == mode) & (part["status"] == "ok")]
    return rows.set_index("seq_len")[column].dropna().sort_index()


def _lengths(ns) -> str:
    ns = list(ns)
    return format_size(ns[0]) if len(ns) == 1 else f"{format_size(ns[0])}..{format_size(ns[-1])}"


def _crossing(part, a: str, b: str, mode: str) -> str | None:
    ta, tb = _series(part, a, mode, "time_ms"), _series(part, b, mode, "time_ms")
    common = ta.index.intersection(tb.index)
    if len(common) == 0:
        return None
    faster = (ta[common] < tb[common]).to_list()
    ns, word = list(common), MODE_WORDS[mode]
    last = ns[-1]
    ratio = tb[last] / ta[last]
    at_last = (f"at {format_size(last)} it is {ratio:.2g}x faster" if ratio >= 1
               else f"at {format_size(last)} it takes {1 / ratio:.2g}x the time")
    if all(faster):
        return (f"{short(a)} is faster than {short(b)} in {word} at every length both ran "
                f"({_lengths(ns)}); {at_last}.")
    if not any(faster):
        return (f"{short(a)} is slower than {short(b)} in {word} at every length both ran "
                f"({_lengths(ns)}); {at_last}.")
    changes = []
    for i in range(1, len(ns)):
        if faster[i] != faster[i - 1]:
            verb = "overtakes" if faster[i] else "falls behind"
            changes.append(f"{verb} {short(b) if not changes else 'it'} in {word} between "
                           f"{format_size(ns[i - 1])} and {format_size(ns[i])}")
    return f"{short(a)} " + ", then ".join(changes) + f"; {at_last}."


def _growth(part, mechs, mode: str, column: str, what: str) -> str | None:
    """'Forward runtime against length (log-log slope): Lightning-2 n^1.0 over 4k..128k, ...'
    fitted from FLAT_FROM up where there are two points there (below, overheads rule)."""
    parts = []
    for m in mechs:
        s = _series(part, m, mode, column)
        s = s[s > 0]
        s = s[s.index >= FLAT_FROM] if (s.index >= FLAT_FROM).sum() >= 2 else s
        if len(s) >= 2:
            slope = np.polyfit(np.log(s.index.to_numpy(float)), np.log(s.to_numpy()), 1)[0]
            parts.append(f"{short(m)} n^{slope:.1f} over {_lengths(s.index)}")
    if not parts:
        return None
    return (f"{MODE_WORDS[mode].capitalize()} {what} against length (log-log slope): "
            + ", ".join(parts) + ".")


def _tokens(part, mech: str, mode: str) -> str | None:
    s = _series(part, mech, mode, "tokens_per_s")
    if len(s) < 2:
        return None
    word = MODE_WORDS[mode]
    tail = s[s.index >= FLAT_FROM]
    if len(tail) >= 3 and tail.min() >= 0.75 * tail.max():
        spread = 100 * (1 - tail.min() / tail.max())
        return (f"{short(mech)} {word} tokens/s stays within {spread:.0f}% of its best from "
                f"{format_size(tail.index[0])} to {format_size(tail.index[-1])} "
                f"({_number(tail.min())}..{_number(tail.max())} tokens/s).")
    change = s.iloc[-1] / s.iloc[0]
    verb = f"falls {1 / change:.2g}x" if change < 1 else f"rises {change:.2g}x"
    return (f"{short(mech)} {word} tokens/s {verb} from {format_size(s.index[0])} to "
            f"{format_size(s.index[-1])} ({_number(s.iloc[0])} to {_number(s.iloc[-1])}).")


def _limits(part, mech: str, mode: str) -> str | None:
    rows = part[(part["mechanism"] == mech) & (part["mode"] == mode)].sort_values("seq_len")
    bad = rows[rows["status"] != "ok"]
    if len(bad) == 0:
        return None
    first = bad.iloc[0]
    ok = rows[(rows["status"] == "ok") & (rows["seq_len"] < first["seq_len"])]
    longest = (f" (longest measured: {format_size(ok['seq_len'].max())})" if len(ok)
               else " (at every length tried)")
    where = f"from {format_size(first['seq_len'])}"
    if first["status"] == "oom":
        return f"{short(mech)} runs out of memory in {MODE_WORDS[mode]} {where}{longest}."
    reason = f": {first['reason']}" if first["reason"] else ""
    return (f"{short(mech)} {MODE_WORDS[mode]} has no measurement {where}{longest}, "
            f"status {first['status']}{reason}.")


def _memory_at(part, mechs, mode: str, column: str, what: str) -> str | None:
    """Memory of every mechanism that ran at the longest length two or more of them ran."""
    ok = part[part["mechanism"].isin(mechs) & (part["mode"] == mode) & (part["status"] == "ok")
              & part[column].notna()]
    counts = ok.groupby("seq_len")["mechanism"].nunique()
    if not (counts >= 2).any():
        return None
    n = counts[counts >= 2].index.max()
    at = ok[ok["seq_len"] == n].set_index("mechanism")[column]
    cells = [f"{short(m)} {at[m]:,.0f} MiB" for m in mechs if m in at.index]
    return f"{MODE_WORDS[mode].capitalize()} {what} at {format_size(n)}: " + ", ".join(cells) + "."


def _failed(part, mech: str, mode: str) -> str | None:
    rows = _series(part, mech, mode, "check").loc[lambda s: s == "fail"]
    if not len(rows):
        return None
    return (f"{short(mech)} failed its correctness check in {MODE_WORDS[mode]} at "
            f"{', '.join(map(format_size, rows.index))}: those points are drawn dashed and are "
            "not to be trusted.")


def findings_by_panel(df: pd.DataFrame, mechanisms=PAPER_MECHANISMS, shape: dict | None = None,
                      memory: str = "peak_mem_mib") -> dict[str, list[str]]:
    """Sentences about each panel of the paper figure, every one computed from the records.

    Runtime panels: who overtakes whom (Lightning-2 against FlashAttention-2 and Lightning-1,
    Lightning-1 against FlashAttention-2), how runtime grows with length, how tokens/s holds
    up, which checks failed. Memory panels: how memory grows, what each needs at the longest
    length several ran, where each stops (out of memory, skipped). Mechanisms the run lacks
    are named once under "run"; nothing else is said about them.
    """
    part, shape = one_shape(df, shape)
    present = [m for m in mechanisms if m in set(part["mechanism"])]
    missing = [m for m in mechanisms if m not in present]
    out: dict[str, list] = {"run": []}
    if missing:
        out["run"].append("Not in this run, so not compared: "
                          + ", ".join(name(m) for m in missing) + ".")
    what = "peak memory" if memory == "peak_mem_mib" else "memory above inputs"
    modes = [m for m in ("fwd", "bwd") if m in set(part["mode"])] if present else []
    for mode in modes:
        runtime = out.setdefault(f"{MODE_WORDS[mode]} runtime", [])
        for a, b in (("lightning2", "flash2"), ("lightning2", "lightning1"),
                     ("lightning1", "flash2")):
            if a in present and b in present:
                runtime.append(_crossing(part, a, b, mode))
        runtime.append(_growth(part, present, mode, "time_ms", "runtime"))
        runtime.extend(_tokens(part, m, mode) for m in present)
        runtime.extend(_failed(part, m, mode) for m in present)
    for mode in modes:
        mem = out.setdefault(f"{MODE_WORDS[mode]} memory", [])
        mem.append(_growth(part, present, mode, memory, what))
        mem.append(_memory_at(part, present, mode, memory, what))
        mem.extend(_limits(part, m, mode) for m in present)
    return {panel: [s for s in lines if s] for panel, lines in out.items()}


def findings(df: pd.DataFrame, mechanisms=PAPER_MECHANISMS, shape: dict | None = None,
             memory: str = "peak_mem_mib") -> list[str]:
    """findings_by_panel's sentences in one list, panel by panel (run, runtime, memory)."""
    return [line for lines in findings_by_panel(df, mechanisms, shape, memory).values()
            for line in lines]


# --- the official repository's numbers ---------------------------------------------------------


def official_operator_ms() -> pd.DataFrame:
    """The official README's timings (batch 4, heads 32, head dim 128, bf16, causal, ms)."""
    return pd.read_csv(OFFICIAL_CSV, comment="#")


class Comparison(NamedTuple):
    table: pd.DataFrame  # mode, seq_len, mechanism, official_ms, ours_ms, ours_status, ratio
    figure: object  # matplotlib Figure


def official_comparison(df: pd.DataFrame, title: str = "") -> Comparison:
    """Our times beside the official repository's, same shape only, with ours / theirs.

    Every published row is kept; where the run has no measurement of it, ``ours_ms`` and
    ``ratio`` are NaN and ``ours_status`` says why ("not in run", "oom", ...).
    """
    theirs = official_operator_ms().rename(columns={"mechanism": "official_name",
                                                    "ms": "official_ms"})
    theirs["mechanism"] = theirs["official_name"].map(OFFICIAL_NAMES)
    mask = np.logical_and.reduce([df[k] == v for k, v in PAPER_SHAPE.items()])
    ours, _ = one_shape(df[mask], PAPER_SHAPE) if mask.any() else (df[mask], PAPER_SHAPE)
    ours = ours[["mechanism", "mode", "seq_len", "status", "time_ms", "device"]].rename(
        columns={"time_ms": "ours_ms", "status": "ours_status"})
    table = theirs.merge(ours, on=["mechanism", "mode", "seq_len"], how="left")
    table["ours_status"] = table["ours_status"].fillna("not in run")
    table.loc[table["ours_status"] != "ok", "ours_ms"] = np.nan
    table["ratio"] = table["ours_ms"] / table["official_ms"]
    table = table[["mode", "seq_len", "mechanism", "official_name", "official_ms", "ours_ms",
                   "ours_status", "ratio"]].sort_values(["mode", "mechanism", "seq_len"],
                                                        ignore_index=True)
    return Comparison(table, _official_figure(table, ours, title))


def official_summary(table: pd.DataFrame) -> list[str]:
    """One sentence per published mechanism and mode: the range and median of ours / theirs."""
    both = table.dropna(subset=["ratio"])
    out = [f"{short(m)} {MODE_WORDS[mode]}: ours / official is {rows['ratio'].min():.2f}.."
           f"{rows['ratio'].max():.2f} (median {rows['ratio'].median():.2f}) over "
           f"{len(rows)} lengths ({_lengths(sorted(rows['seq_len']))})."
           for mode in ("fwd", "bwd") for m, rows in both[both["mode"] == mode].groupby(
               "mechanism")]
    missing = sorted(set(table["official_name"]) - set(both["official_name"]))
    if missing:
        out.append(f"No measurement of ours to set beside theirs for: {', '.join(missing)}.")
    return out


def _official_figure(table: pd.DataFrame, ours: pd.DataFrame, title: str):
    style = _style(table["mechanism"].unique())
    seq_lens = sorted(table["seq_len"].unique())
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    for ax, mode in zip(axes[:2], ("fwd", "bwd")):
        for mech, rows in table[table["mode"] == mode].groupby("mechanism", sort=False):
            st = style[name(mech)]
            ax.plot(rows["seq_len"], rows["official_ms"], color=st["color"], marker=st["marker"],
                    markerfacecolor="white", linestyle=":", markersize=5)
            ax.plot(rows["seq_len"], rows["ours_ms"], color=st["color"], marker=st["marker"],
                    markersize=5)
        _finish_axis(ax, seq_lens)
        rows = table[table["mode"] == mode]
        _log_ticks(ax, pd.concat([rows["official_ms"], rows["ours_ms"]]), big=False)
        ax.set_title(f"{MODE_WORDS[mode]}: runtime (ms)", fontsize=10)
        ax.set_xlabel("sequence length")
    ax = axes[2]
    for (mech, mode), rows in table.groupby(["mechanism", "mode"], sort=False):
        st = style[name(mech)]
        ax.plot(rows["seq_len"], rows["ratio"], color=st["color"], marker=st["marker"],
                linestyle="-" if mode == "fwd" else "--", markersize=5)
    _finish_axis(ax, seq_lens)
    ax.axhline(1.0, color="0.3", linewidth=0.8)
    ax.set_title("ours / official: forward solid, backward dashed\n(below 1: ours faster)",
                 fontsize=10)
    ax.set_xlabel("sequence length")
    _log_ticks(ax, table["ratio"], big=False)
    if table["ratio"].isna().all():
        ax.text(0.5, 0.5, "no measurement of ours at these shapes", transform=ax.transAxes,
                ha="center", va="center", color="0.4")
    device = ours["device"].iloc[0] if len(ours) else "not run"
    head = "ours against the official lightning-attention README's operator timings"
    head += f" - {title}" if title else ""
    notes = [head, f"batch 4, heads 32, head dim 128, bf16, causal; ours on {device}, theirs "
             "on a GPU the README does not state"]
    absent = [m for m, rows in table.groupby("mechanism")
              if (rows["ours_status"] == "not in run").all()]
    if absent:
        notes.append("ours not in this run (their line only): "
                     + ", ".join(name(m) for m in _order(absent)))
    fig.suptitle(_lines_of(notes, width=160), fontsize=11)
    handles = [Line2D([], [], color=style[name(m)]["color"], marker=style[name(m)]["marker"],
                      label=name(m)) for m in _order(table["mechanism"].unique())]
    handles += [Line2D([], [], color="0.3", marker="o", label="ours (solid)"),
                Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle=":",
                       label="official README (dotted)"),
                Line2D([], [], color="0.3", linestyle="--", label="ratio, backward (dashed)")]
    _legend_below(fig, handles, ncol=6)
    return fig


# --- files -------------------------------------------------------------------------------------

FIGURES = ("sweep", "paper-kernels", "tokens", "official")


def save_figure(df: pd.DataFrame, figure: str, out_dir: Path, formats=("png", "svg"),
                title: str = "") -> list[Path]:
    """Write one of FIGURES (other than the generic sweep) into ``out_dir``; the paths."""
    out_dir = Path(out_dir)
    extra = []
    if figure == "paper-kernels":
        fig, stem = paper_kernels(df, title=title), "paper-kernels"
    elif figure == "tokens":
        fig, stem = tokens_per_second(df, title=title), "tokens-per-second"
    elif figure == "official":
        table, fig = official_comparison(df, title=title)
        stem = "official-comparison"
        extra.append(out_dir / f"{stem}.csv")
        table.to_csv(extra[0], index=False)
    else:
        raise ValueError(f"unknown figure {figure!r}; choose from {', '.join(FIGURES)}")
    paths = []
    for fmt in formats:
        paths.append(out_dir / f"{stem}.{fmt}")
        fig.savefig(paths[-1], dpi=130)
    plt.close(fig)
    return paths + extra
