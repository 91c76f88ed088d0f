"""paper/comparison_figure.py: ours beside the official timings, and the ratio panel."""

from frames import paper_frame

from attnbench.paper.comparison_figure import official_figure


def test_three_panels_with_a_ratio():
    fig = official_figure(paper_frame(mechanisms=("lightning2", "flash2")))
    assert len(fig.axes) == 3 and fig.axes[2].get_lines()
    title = fig._suptitle.get_text()
    assert "ours on cuda" in title
    assert "no measurement of ours (their line only): xformers (not in run)" in title


def test_nothing_to_compare_says_so_instead_of_an_empty_ratio():
    fig = official_figure(paper_frame(mechanisms=("lightning2",), device="cpu").assign(batch=1))
    ratio = fig.axes[2]
    assert not ratio.get_lines() and not ratio.axison
    assert ratio.texts[0].get_text().startswith("Nothing to compare:")
    title = fig._suptitle.get_text()
    assert "not run" not in title and "nothing of ours at this shape" in title
    assert all(len(ax.get_lines()) == 3 for ax in fig.axes[:2])  # theirs only
