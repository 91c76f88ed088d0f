"""paper/tokens_figure.py: tokens/s of every mechanism, on a SYNTHETIC frame."""

import pandas as pd
from frames import paper_frame, row

from attnbench.paper.selection import label
from attnbench.paper.tokens_figure import tokens_per_second


def test_every_mechanism_one_panel_per_mode_unsupported_named():
    mechs = ("lightning2", "flash2", "linear-cumsum")
    never = [row("xformers", m, n, "unsupported", reason="its CUDA ops do not load")
             for m in ("fwd", "bwd") for n in (1024, 2048)]
    fig = tokens_per_second(pd.concat([paper_frame(mechs), pd.DataFrame(never)]))
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["forward", "backward"]
    for ax in fig.axes:
        assert {line.get_label() for line in ax.get_lines()} == {label(m) for m in mechs}
        assert any(t.get_text().endswith("M") for t in ax.get_yticklabels())
    assert "not run: xformers (its CUDA ops do not load)" in fig._suptitle.get_text()
