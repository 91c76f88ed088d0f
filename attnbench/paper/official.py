"""The official repository's published operator timings, set beside ours.

``attnbench/data/official_repo_operator_ms.csv`` holds the timings the README of
OpenNLPLab/lightning-attention prints (see attnbench/data/README.md); ``official_table``
joins them to our records of the same shape, ``official_summary`` says what the join shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from attnbench.paper.selection import MODE_WORDS, PAPER_SHAPE, lengths, one_shape, short
from attnbench.plots import shape_text

OFFICIAL_CSV = Path(__file__).resolve().parents[1] / "data" / "official_repo_operator_ms.csv"
# Their names -> ours.
OFFICIAL_NAMES = {"Lightning-2": "lightning2", "FlashAttention-2": "flash2",
                  "xformers": "xformers"}
COLUMNS = ["mode", "seq_len", "mechanism", "official_name", "official_ms", "ours_ms",
           "ours_status", "ratio"]


def official_operator_ms() -> pd.DataFrame:
    """The official README's timings: seq_len, mechanism (their name), mode, ms (batch 4,
    heads 32, head dim 128, bf16, causal)."""
    return pd.read_csv(OFFICIAL_CSV, comment="#")


def official_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every published row beside our record of it (``COLUMNS``; ratio = ours / theirs).

    Only our records of ``PAPER_SHAPE`` count; where the run has no measurement of a row,
    ``ours_ms`` and ``ratio`` are NaN and ``ours_status`` says why ("not in run", "oom", ...).
    """
    theirs = official_operator_ms().rename(columns={"mechanism": "official_name",
                                                    "ms": "official_ms"})
    theirs["mechanism"] = theirs["official_name"].map(OFFICIAL_NAMES)
    mask = np.logical_and.reduce([df[k] == v for k, v in PAPER_SHAPE.items()])
    ours, _ = one_shape(df[mask], PAPER_SHAPE) if mask.any() else (df[mask], PAPER_SHAPE)
    ours = ours[["mechanism", "mode", "seq_len", "status", "time_ms"]].rename(
        columns={"time_ms": "ours_ms", "status": "ours_status"})
    table = theirs.merge(ours, on=["mechanism", "mode", "seq_len"], how="left")
    table["ours_status"] = table["ours_status"].fillna("not in run")
    table.loc[table["ours_status"] != "ok", "ours_ms"] = np.nan
    table["ratio"] = table["ours_ms"] / table["official_ms"]
    return table[COLUMNS].sort_values(["mode", "mechanism", "seq_len"], ignore_index=True)


def nothing_to_compare(df: pd.DataFrame, table: pd.DataFrame) -> str | None:
    """None where the run measured something of the official table, else a sentence saying
    that there is nothing to compare and which shapes the run has instead."""
    if table["ratio"].notna().any():
        return None
    shapes = df.drop_duplicates(list(PAPER_SHAPE))
    ran = "; ".join(shape_text(row) for _, row in shapes.head(3).iterrows())
    ran += "; ..." if len(shapes) > 3 else ""
    device = df["device"].iloc[0] if len(df) else "no device"
    names = sorted(OFFICIAL_NAMES)
    names = f"{', '.join(names[:-1])} or {names[-1]}"
    return (f"Nothing to compare: this run has no measurement of {names} at the official shape "
            f"({shape_text(PAPER_SHAPE)}, causal). It ran {ran} on {device}.")


def official_summary(df: pd.DataFrame) -> list[str]:
    """One sentence per published mechanism and mode: the range and median of ours / theirs;
    the published mechanisms we have no measurement of; or that there is nothing to compare."""
    table = official_table(df)
    nothing = nothing_to_compare(df, table)
    if nothing:
        return [nothing]
    both = table.dropna(subset=["ratio"])
    out = [f"{short(m)} {MODE_WORDS[mode]}: ours / official is {rows['ratio'].min():.2f}.."
           f"{rows['ratio'].max():.2f} (median {rows['ratio'].median():.2f}) over "
           f"{len(rows)} lengths ({lengths(rows['seq_len'])})."
           for mode in ("fwd", "bwd")
           for m, rows in both[both["mode"] == mode].groupby("mechanism")]
    missing = sorted(set(table["official_name"]) - set(both["official_name"]))
    if missing:
        out.append(f"No measurement of ours to set beside theirs for: {', '.join(missing)}.")
    return out
