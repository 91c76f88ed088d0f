"""paper/kernel_figure.py: Fig. 3 of the paper, on SYNTHETIC frames (tests/frames.py)."""

import numpy as np
from frames import PAPER, paper_frame

from attnbench.paper.kernel_figure import paper_kernels
from attnbench.paper.selection import PAPER_MECHANISMS, label


def _lines(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines()}


def _marks_x(ax) -> list[float]:
    return sorted(x for c in ax.collections for x, y in np.asarray(c.get_offsets()) if y > 0.7)


def test_four_panels_every_mechanism_oom_marked():
    df = paper_frame()
    fig = paper_kernels(df)
    assert [ax.get_title() for ax in fig.axes] == [
        "forward: runtime (ms)", "backward: runtime (ms)", "forward: peak memory (MiB)",
        "backward: peak memory (MiB)"]
    for ax in fig.axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()][:2] == ["1k", "2k"]
        assert set(_lines(ax)) == {label(m) for m in PAPER}
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts[:5] == [label(m) for m in PAPER_MECHANISMS]
    assert texts[5:] == ["out of memory (top edge)"]
    oom = df.query("mode == 'fwd' and status == 'oom'")["seq_len"]
    assert _marks_x(fig.axes[0]) == sorted(oom)
    cumsum = _lines(fig.axes[0])[label("linear-cumsum")]
    assert np.nanmax(np.where(np.isnan(cumsum.get_ydata()), np.nan, cumsum.get_xdata())) == 16384
    assert "SYNTHETIC" not in fig._suptitle.get_text()


def test_absent_mechanisms_named_skips_marked_failed_checks_dashed():
    df = paper_frame(mechanisms=("lightning2", "lightning1"), fail_check=("lightning1", "bwd"),
                     skip_from=("lightning1", 65536))
    fig = paper_kernels(df, title="t")
    title = fig._suptitle.get_text()
    assert "not in this run: FlashAttention-2 (flash2), Vanilla (linear-masked)" in title
    assert _lines(fig.axes[1])[label("lightning1") + " (failed check)"].get_linestyle() == "--"
    assert _marks_x(fig.axes[0]) == [65536, 131072]
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "skipped: predicted over the time budget (top edge)" in texts


def test_cpu_run_says_memory_is_not_measured():
    df = paper_frame(mechanisms=("lightning2",), device="cpu")
    df[["peak_mem_mib", "extra_mem_mib"]] = np.nan
    fig = paper_kernels(df)
    assert [t.get_text() for t in fig.axes[2].texts] == ["memory is not measured on the CPU"]
    assert fig.axes[2].get_xlim() == fig.axes[0].get_xlim()
    assert fig.axes[0].get_lines()


def test_nothing_of_the_paper_in_the_run():
    fig = paper_kernels(paper_frame(mechanisms=("xformers",)))
    assert all(not ax.get_lines() for ax in fig.axes)
    assert [t.get_text() for ax in fig.axes for t in ax.texts] == [
        "no fwd records", "no bwd records", "no fwd records", "no bwd records"]


def test_unsupported_everywhere_is_named_not_drawn():
    import pandas as pd
    from frames import row

    never = [row("lightning1", m, n, "unsupported", reason="runs on cuda only")
             for m in ("fwd", "bwd") for n in (1024, 2048)]
    fig = paper_kernels(pd.concat([paper_frame(mechanisms=("lightning2",)), pd.DataFrame(never)]))
    assert "not run: Lightning-1 (lightning1) (runs on cuda only)" in fig._suptitle.get_text()
    assert _marks_x(fig.axes[0]) == []  # no U marks
    assert set(_lines(fig.axes[0])) == {label("lightning2")}
