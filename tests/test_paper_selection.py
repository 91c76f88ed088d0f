"""paper/selection.py: the paper's mechanisms and shape, and the rows of one shape."""

import pandas as pd
from frames import paper_frame, row

from attnbench.paper import selection


def test_one_shape_prefers_the_paper_shape_then_the_biggest():
    paper = paper_frame(mechanisms=("lightning2",))
    small = paper_frame(mechanisms=("lightning2", "flash2")).assign(heads=8)
    part, shape = selection.one_shape(pd.concat([small, paper, small], ignore_index=True))
    assert shape == selection.PAPER_SHAPE and len(part) == len(paper)
    part, shape = selection.one_shape(small)
    assert shape["heads"] == 8 and len(part) == len(small)
    assert selection.describe(part, shape) == "batch 4, heads 8, head dim 128, bf16, causal, cuda"


def test_one_shape_keeps_decay_rows_where_both_ran():
    df = pd.DataFrame([row("lightning2", "fwd", 1024, ms=1.0, decay=True),
                       row("lightning2", "fwd", 1024, ms=2.0, decay=False),
                       row("flash2", "fwd", 1024, ms=3.0)])
    part, _ = selection.one_shape(df)
    assert sorted(zip(part["mechanism"], part["time_ms"])) == [("flash2", 3.0), ("lightning2", 1.0)]


def test_names():
    assert selection.label("flash2") == "FlashAttention-2 (flash2)"
    assert selection.label("sdpa-math") == "sdpa-math"
    assert selection.short("lightning2") == "Lightning-2"
    assert selection.order(["sdpa-math", "lightning2", "lightning1"]) == [
        "lightning1", "lightning2", "sdpa-math"]
    assert selection.lengths([4096, 1024, 2048]) == "1k..4k" and selection.lengths([2048]) == "2k"
