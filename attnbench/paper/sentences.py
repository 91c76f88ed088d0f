"""Sentences about the paper's figure, every one computed from the records.

No pair of mechanisms is named in advance: who overtakes whom, who is fastest at the longest
length, how runtime and memory grow, how tokens/s holds up and where each mechanism stops
are read off the data, so the same code speaks about any run.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from attnbench.paper.selection import (
    MODE_WORDS,
    PAPER_MECHANISMS,
    label,
    lengths,
    one_shape,
    order,
    short,
)
from attnbench.plots import number
from attnbench.sizes import format_size

FLAT_FROM = 4096  # slopes and tokens/s flatness are judged from here up (below, overheads rule)


def _table(part: pd.DataFrame, mechs, mode: str, column: str) -> pd.DataFrame:
    """seq_len x mechanism of the measured values (NaN: not measured)."""
    ok = part[part["mechanism"].isin(mechs) & (part["mode"] == mode) & (part["status"] == "ok")]
    table = ok.pivot_table(index="seq_len", columns="mechanism", values=column)
    return table[[m for m in mechs if m in table.columns]]


def _tail(s: pd.Series) -> pd.Series:
    """From FLAT_FROM up where there are two points there, else all of it."""
    s = s.dropna()
    s = s[s > 0]
    return s[s.index >= FLAT_FROM] if (s.index >= FLAT_FROM).sum() >= 2 else s


def _value(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _times(r: float) -> str:
    return f"{r:,.0f}x" if r >= 10 else f"{r:.2g}x"


def overtakes(part: pd.DataFrame, mechs, mode: str) -> list[str]:
    """'In forward, Lightning-2 overtakes FlashAttention-2 between 2k and 4k, ...': for every
    pair whose order changes over the lengths both ran, the last change, by the one ahead."""
    times, word = _table(part, mechs, mode, "time_ms"), MODE_WORDS[mode]
    ahead_of: dict[str, dict] = {}  # ahead -> (n, "between 2k and 4k") -> those behind
    for a, b in combinations(times.columns, 2):
        both = times[[a, b]].dropna()
        faster = (both[a] < both[b]).to_numpy()
        changes = np.flatnonzero(faster[1:] != faster[:-1]) + 1
        if len(changes):
            i, ahead, behind = changes[-1], *((a, b) if faster[-1] else (b, a))
            again = f" (after {len(changes) - 1} earlier changes)" if len(changes) > 1 else ""
            where = (f"between {format_size(both.index[i - 1])} and "
                     f"{format_size(both.index[i])}{again}")
            ahead_of.setdefault(ahead, {}).setdefault((both.index[i], where), []).append(
                short(behind))
    if not ahead_of and len(times.columns) >= 2:
        return [f"In {word}, no mechanism overtakes another ({lengths(times.index)})."]
    return [f"In {word}, {short(m)} overtakes " + ", ".join(
                f"{_and(behind)} {where}" for (_, where), behind in sorted(ahead_of[m].items()))
            + "."
            for m in times.columns if m in ahead_of]


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def at_longest(part: pd.DataFrame, mechs, mode: str, column: str, what: str) -> str | None:
    """'Forward runtime at 128k, least first: Lightning-2 6.44 ms, Lightning-1 1,108 ms (172x)':
    every mechanism at the longest length two or more ran, with how many times the least."""
    table = _table(part, mechs, mode, column)
    several = table[table.notna().sum(axis=1) >= 2]
    if several.empty:
        return None
    n, unit = several.index.max(), "ms" if column == "time_ms" else "MiB"
    at = several.loc[n].dropna().sort_values()
    cells = [f"{short(m)} {_value(v)} {unit}" + (f" ({_times(v / at.iloc[0])})"
                                                 if v >= 1.1 * at.iloc[0] else "")
             for m, v in at.items()]
    return (f"{MODE_WORDS[mode].capitalize()} {what} at {format_size(n)}, least first: "
            + ", ".join(cells) + ".")


def growth(part: pd.DataFrame, mechs, mode: str, column: str, what: str) -> str | None:
    """'Forward runtime against length (log-log slope): Lightning-2 n^1.0 over 4k..128k, ...'"""
    cells = []
    for m, s in _table(part, mechs, mode, column).items():
        s = _tail(s)
        if len(s) >= 2:
            slope = np.polyfit(np.log(s.index.to_numpy(float)), np.log(s.to_numpy()), 1)[0]
            cells.append(f"{short(m)} n^{slope:.1f} over {lengths(s.index)}")
    if not cells:
        return None
    return (f"{MODE_WORDS[mode].capitalize()} {what} against length (log-log slope): "
            + ", ".join(cells) + ".")


def tokens(part: pd.DataFrame, mechs, mode: str) -> str | None:
    """'Forward tokens/s: Lightning-2 flat within 5% over 4k..128k (79M..83M), ...': flat
    where the worst is within 25% of the best, else how much it changes end to end."""
    cells = []
    for m, s in _table(part, mechs, mode, "tokens_per_s").items():
        s = _tail(s)
        if len(s) < 2:
            continue
        if s.min() >= 0.75 * s.max():
            cells.append(f"{short(m)} flat within {100 * (1 - s.min() / s.max()):.0f}% over "
                         f"{lengths(s.index)} ({number(s.min())}..{number(s.max())})")
        else:
            change = s.iloc[-1] / s.iloc[0]
            verb = f"falls {_times(1 / change)}" if change < 1 else f"rises {_times(change)}"
            cells.append(f"{short(m)} {verb} over {lengths(s.index)} ({number(s.iloc[0])} to "
                         f"{number(s.iloc[-1])})")
    return f"{MODE_WORDS[mode].capitalize()} tokens/s: " + "; ".join(cells) + "." if cells else None


def stops(part: pd.DataFrame, mech: str, mode: str) -> str | None:
    """Where a mechanism has its first length without a measurement, and why."""
    rows = part[(part["mechanism"] == mech) & (part["mode"] == mode)].sort_values("seq_len")
    bad = rows[rows["status"] != "ok"]
    if bad.empty:
        return None
    first, word = bad.iloc[0], MODE_WORDS[mode]
    ok = rows[(rows["status"] == "ok") & (rows["seq_len"] < first["seq_len"])]
    longest = (f" (longest measured: {format_size(ok['seq_len'].max())})" if len(ok)
               else " (at every length tried)")
    where = f"from {format_size(first['seq_len'])}"
    if first["status"] == "oom":
        return f"{short(mech)} runs out of memory in {word} {where}{longest}."
    reason = f": {first['reason']}" if first["reason"] else ""
    return (f"{short(mech)} {word} has no measurement {where}{longest}, "
            f"status {first['status']}{reason}.")


def failed_checks(part: pd.DataFrame, mech: str, mode: str) -> str | None:
    rows = part[(part["mechanism"] == mech) & (part["mode"] == mode) & (part["status"] == "ok")
                & (part["check"] == "fail")]
    if rows.empty:
        return None
    return (f"{short(mech)} failed its correctness check in {MODE_WORDS[mode]} at "
            f"{', '.join(map(format_size, sorted(rows['seq_len'])))}: those points are drawn "
            "dashed and are not to be trusted.")


def findings_by_panel(df: pd.DataFrame, mechanisms=PAPER_MECHANISMS, shape: dict | None = None,
                      memory: str = "peak_mem_mib") -> dict[str, list[str]]:
    """The sentences of each panel of the paper figure (``one_shape``'s rows of ``mechanisms``).

    "run": the mechanisms the run lacks (nothing else is said of them). Runtime panels: who
    overtakes whom, times at the longest length, growth, tokens/s, failed checks. Memory
    panels: growth, memory at the longest length, where each mechanism stops and why.
    """
    part, shape = one_shape(df, shape)
    present = [m for m in mechanisms if m in set(part["mechanism"])]
    missing = [m for m in mechanisms if m not in present]
    out: dict[str, list] = {"run": []}
    if missing:
        out["run"].append("Not in this run, so not compared: "
                          + ", ".join(label(m) for m in missing) + ".")
    what = "peak memory" if memory == "peak_mem_mib" else "memory above inputs"
    modes = [m for m in ("fwd", "bwd") if m in set(part["mode"])] if present else []
    for mode in modes:
        out[f"{MODE_WORDS[mode]} runtime"] = [
            *overtakes(part, present, mode), at_longest(part, present, mode, "time_ms", "runtime"),
            growth(part, present, mode, "time_ms", "runtime"), tokens(part, present, mode),
            *(failed_checks(part, m, mode) for m in present)]
    for mode in modes:
        out[f"{MODE_WORDS[mode]} memory"] = [
            growth(part, present, mode, memory, what),
            at_longest(part, present, mode, memory, what), *(stops(part, m, mode) for m in present)]
    return {panel: [s for s in lines if s] for panel, lines in out.items()}


def findings(df: pd.DataFrame, mechanisms=PAPER_MECHANISMS, shape: dict | None = None,
             memory: str = "peak_mem_mib") -> list[str]:
    """findings_by_panel's sentences in one list, panel by panel."""
    return [s for lines in findings_by_panel(df, mechanisms, shape, memory).values() for s in lines]


def tokens_findings(df: pd.DataFrame, shape: dict | None = None) -> list[str]:
    """How tokens/s of every mechanism at the figure's shape holds up, one sentence per mode."""
    part, _ = one_shape(df, shape)
    mechs = order(part["mechanism"].unique())
    return [s for mode in MODE_WORDS if (s := tokens(part, mechs, mode))]
