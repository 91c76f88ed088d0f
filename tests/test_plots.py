"""plots.py: the style helpers every figure draws with, and the sweep figure of a run."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from frames import paper_frame, row

from attnbench import plots

REAL_RUN = Path(__file__).resolve().parents[1] / "results" / "h100-paper"


def _mark_offsets(ax) -> dict[float, list[float]]:
    """y (axes fraction) -> x of the status marks drawn at the top edge."""
    out = {}
    for coll in ax.collections:
        xy = np.asarray(coll.get_offsets())
        if len(xy) and np.all(xy[:, 1] > 0.7):
            out.setdefault(round(float(xy[0, 1]), 3), []).extend(xy[:, 0].tolist())
    return out


def test_formats():
    assert plots.FORMATS == ("png", "svg", "pdf")
    assert set(plots.DEFAULT_FORMATS) <= set(plots.FORMATS)


def test_styles_pin_first_and_stay_distinct():
    style = plots.styles(["b", "a", "z"], first=("z", "absent"))
    assert list(style) == ["z", "absent", "a", "b"]  # pinned first, even if absent; then sorted
    assert style["z"] == plots.styles(["z", "q"], first=("z", "absent"))["z"]
    many = plots.styles([f"m{i:02d}" for i in range(20)])
    assert len({tuple(s["color"]) for s in many.values()}) == 20
    assert len({tuple(s["color"]) for s in list(many.values())[:10]}) == 10


def test_line_broken_at_lengths_without_a_measurement():
    df = pd.DataFrame([row("lightning2", "fwd", 1024, ms=1.0),
                       row("lightning2", "fwd", 2048, "timeout", reason="over 60 s"),
                       row("lightning2", "fwd", 4096, ms=4.0),
                       row("lightning2", "fwd", 8192, "skipped", reason="predicted 40 s"),
                       row("lightning2", "fwd", 16384, ms=16.0)])
    fig, ax = plots.plt.subplots()
    marks = plots.draw_series(ax, df, "time_ms", plots.styles(["lightning2"]), band=True)
    (line,) = ax.get_lines()
    y = np.asarray(line.get_ydata(), dtype=float)
    assert list(line.get_xdata()) == [1024, 2048, 4096, 8192, 16384]
    assert np.isnan(y[[1, 3]]).all() and list(y[[0, 2, 4]]) == [1.0, 4.0, 16.0]
    assert marks == 2
    assert sorted(map(sorted, _mark_offsets(ax).values())) == [[2048], [8192]]
    plots.plt.close(fig)


def test_every_mark_drawn_is_in_the_legend():
    df = paper_frame(skip_from=("lightning1", 65536))
    df.loc[(df["mechanism"] == "flash2") & (df["seq_len"] == 4096), "status"] = "error"
    fig = plots.plt.figure()
    plots.legend_below(fig, df, plots.styles(df["mechanism"].unique()))
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    for status in ("oom", "skipped", "error"):
        assert f"{plots.STATUS_MARKS[status][1]} (top edge)" in texts
    assert not any("timed out" in t for t in texts)  # nothing timed out: no such entry
    plots.plt.close(fig)


def test_headroom_keeps_lines_below_the_marks():
    fig, ax = plots.plt.subplots()
    values = pd.Series([0.1, 1000.0])
    plots.finish_axis(ax, [1024, 2048], values, marks=3)
    lo, hi = np.log10(ax.get_ylim())
    top_of_data = (3 - lo) / (hi - lo)  # axes fraction of 1000
    assert top_of_data < 0.97 - 3 * 0.055
    plots.plt.close(fig)


@pytest.mark.parametrize("lo, hi", [(7.7e3, 18.2e3), (0.98, 1.0), (1e3, 1e5), (2.0, 9.0)])
def test_log_axis_labels_two_values_or_more_in_any_range(lo, hi):
    """3B's TGS spans 7.7k..18.2k, less than half a decade: 10k alone said too little."""
    fig, ax = plots.plt.subplots()
    ax.plot([1024, 2048], [lo, hi])
    plots.finish_axis(ax, [1024, 2048], pd.Series([lo, hi]))
    fig.canvas.draw()
    bottom, top = ax.get_ylim()
    shown = [t for t in ax.get_yticks() if bottom <= t <= top]
    assert len(shown) >= 2
    plots.plt.close(fig)


def test_plot_run_cpu_in_every_format(tmp_path):
    df = paper_frame(mechanisms=("lightning2", "flash2"), device="cpu")
    paths = plots.plot_run(df, tmp_path, "cpu run", formats=plots.FORMATS)
    assert [p.name for p in paths][0] == "sweep.png"
    assert [p.suffix for p in paths] == [".png", ".svg", ".pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(ValueError, match="unknown format 'jpg'"):
        plots.save(plots.plt.figure(), tmp_path, "x", formats=("jpg",))


def test_plot_run_one_figure_per_shape(tmp_path):
    df = paper_frame(mechanisms=("lightning2",)).query("mode == 'fwd'")
    both = pd.concat([df, df.assign(head_dim=64, value_dim=64)], ignore_index=True)
    names = sorted(p.name for p in plots.plot_run(both, tmp_path, "two shapes", ("png",)))
    assert names == ["sweep-head_dim128-value_dim128.png", "sweep-head_dim64-value_dim64.png"]


def test_shape_text():
    r = row("lightning2", "fwd", 1024, ms=1.0)
    assert plots.shape_text(r) == "batch 4, heads 32, head dim 128, bf16"
    assert plots.shape_text({**r, "value_dim": 64}) == (
        "batch 4, heads 32, head dim 128, value dim 64, bf16")


def test_unsupported_everywhere_named_not_drawn():
    df = paper_frame(mechanisms=("lightning2",))
    df = pd.concat([df, pd.DataFrame([row("xformers", m, n, "unsupported", reason="no ops")
                                      for m in ("fwd", "bwd") for n in (1024, 2048)])])
    assert plots.never_ran(df) == {"xformers": "no ops"}


@pytest.mark.skipif(not REAL_RUN.is_dir(), reason="results/h100-paper is not in the checkout")
def test_plot_the_committed_run(tmp_path):
    from attnbench import records

    paths = plots.plot_run(records.load(REAL_RUN), tmp_path, "h100-paper", formats=("png",))
    assert [p.name for p in paths] == ["sweep.png"] and paths[0].stat().st_size > 50_000


def test_legend_fits_the_figure_width():
    df = paper_frame()
    fig = plots.plt.figure(figsize=(6, 4))
    fig.add_subplot()
    plots.legend_below(fig, df, plots.styles(df["mechanism"].unique()), ncol=6)
    box = fig.legends[0].get_window_extent(fig.canvas.get_renderer())
    assert box.width <= fig.bbox.width
    plots.plt.close(fig)
