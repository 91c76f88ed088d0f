import dataclasses

import pytest
from fakes import make_case

from attnbench.case import KEY_COLUMNS, SERIES_COLUMNS, SHAPE_COLUMNS, Case


def test_columns_derive_from_the_fields():
    assert KEY_COLUMNS == [f.name for f in dataclasses.fields(Case)]
    assert KEY_COLUMNS[:9] == ["mechanism", "mode", "batch", "heads", "seq_len", "head_dim",
                               "value_dim", "dtype", "decay"]
    assert SERIES_COLUMNS == [c for c in KEY_COLUMNS if c != "seq_len"]
    assert SHAPE_COLUMNS == [c for c in SERIES_COLUMNS if c not in ("mechanism", "mode")]


def test_label_leaves_out_what_says_nothing():
    case = make_case(batch=2, heads=16, seq_len=4096, head_dim=128, dtype="bf16", decay=True)
    assert case.label() == "b2-h16-n4096-d128-bf16-decay"  # export names of schema 1 runs
    assert case.with_(value_dim=64, decay=False).label() == "b2-h16-n4096-d128-e64-bf16"
    assert case.label(only=["heads", "dtype"], sep=" ") == "h16 bf16"


def test_key_series_and_tokens():
    case = make_case(batch=3, seq_len=100)
    assert case.key() == tuple(case.to_row().values())
    assert case.series() == case.with_(seq_len=7).series() and case.tokens == 300


def test_rows_of_schema_1_and_bad_rows():
    row = make_case(head_dim=48).to_row()
    del row["value_dim"]
    assert Case.from_row(row).value_dim == 48
    with pytest.raises(KeyError):
        Case.from_row({"mechanism": "m"})
    with pytest.raises(ValueError):
        Case.from_row({**row, "batch": 1.5})
    with pytest.raises(ValueError):
        Case.from_row({**row, "dtype": 3})
