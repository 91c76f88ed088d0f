"""paper/official.py: the published timings joined to ours (SYNTHETIC frames)."""

import pandas as pd
import pytest
from frames import paper_frame

from attnbench.paper import official


def test_table_keeps_every_published_row_and_only_the_official_shape():
    df = paper_frame(mechanisms=("lightning2", "flash2", "xformers", "lightning1"))
    other = df.assign(heads=16, time_ms=df["time_ms"] * 100)  # must not leak in
    table = official.official_table(pd.concat([df, other], ignore_index=True))
    assert list(table.columns) == official.COLUMNS
    assert len(table) == len(official.official_operator_ms())
    assert set(table["mechanism"]) == {"lightning2", "flash2", "xformers"}
    row = table.query("mechanism == 'flash2' and mode == 'fwd' and seq_len == 4096").iloc[0]
    ours = df.query("mechanism == 'flash2' and mode == 'fwd' and seq_len == 4096")["time_ms"]
    assert row["official_ms"] == 2.740 and row["ours_ms"] == pytest.approx(ours.item())
    assert row["ratio"] == pytest.approx(ours.item() / 2.740)
    short = table[table["seq_len"] == 512]  # published from 512; the frame starts at 1k
    assert short["ratio"].isna().all() and (short["ours_status"] == "not in run").all()


def test_summary_sentences():
    df = paper_frame(mechanisms=("lightning2", "flash2"))
    table = official.official_table(df)
    fwd = table.query("mechanism == 'flash2' and mode == 'fwd'")["ratio"].dropna()
    summary = official.official_summary(df)
    assert summary[0] == (f"FlashAttention-2 forward: ours / official is {fwd.min():.2f}.."
                          f"{fwd.max():.2f} (median {fwd.median():.2f}) over 6 lengths (1k..32k).")
    assert summary[-1] == "No measurement of ours to set beside theirs for: xformers."
    assert len(summary) == 5


def test_nothing_to_compare_on_another_shape():
    df = paper_frame(mechanisms=("lightning2",), device="cpu").assign(batch=1, dtype="fp32")
    assert official.official_summary(df) == [
        "Nothing to compare: this run has no measurement of FlashAttention-2, Lightning-2 or "
        "xformers at the official shape (batch 4, heads 32, head dim 128, bf16, causal). It "
        "ran batch 1, heads 32, head dim 128, fp32 on cpu."]
