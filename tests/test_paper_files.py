"""paper/files.py: the paper's figures as files and their sentences, by name.

The committed GPU run (results/h100-paper) must still load, draw and speak.
"""

import json
from pathlib import Path

import pytest
from frames import paper_frame

from attnbench import paper
from attnbench.plots import FORMATS

REAL_RUN = Path(__file__).resolve().parents[1] / "results" / "h100-paper"


def test_figures_by_name():
    assert tuple(paper.FIGURES) == ("paper-kernels", "tokens", "official", "tgs", "decode")
    with pytest.raises(ValueError, match="unknown figure 'fig9'; choose from paper-kernels, "
                                         "tokens, official, tgs, decode"):
        paper.save_figure(paper_frame(), "fig9", ".")
    with pytest.raises(ValueError, match="unknown figure"):
        paper.figure_findings(paper_frame(), "fig9")


def test_every_format(tmp_path):
    paths = paper.save_figure(paper_frame(mechanisms=("lightning2", "flash2")), "official",
                              tmp_path, formats=FORMATS, title="synthetic")
    assert [p.name for p in paths] == [f"official-comparison.{f}" for f in FORMATS] + [
        "official-comparison.csv"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_run_title(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps(
        {"schema_version": 1, "environment": {"gpu": "SYNTHETIC GPU"}}))
    assert paper.run_title(tmp_path) == f"{tmp_path.name}: SYNTHETIC GPU"


@pytest.mark.skipif(not REAL_RUN.is_dir(), reason="results/h100-paper is not in the checkout")
def test_the_committed_run(tmp_path):
    from attnbench import records

    df = records.load(REAL_RUN)
    title = paper.run_title(REAL_RUN)
    assert title == "h100-paper: NVIDIA H100 80GB HBM3"
    # (the notebook tests draw every figure of this run; here one goes to a file)
    paths = paper.save_figure(df, "paper-kernels", tmp_path, formats=("png",), title=title)
    assert paths == [tmp_path / "paper-kernels.png"] and paths[0].stat().st_size > 50_000
    found = paper.figure_findings(df, "paper-kernels")
    assert "Lightning-2 n^1.0 over 4k..256k" in next(
        s for s in found if s.startswith("Forward runtime against length"))
    assert "naive cumsum runs out of memory in backward from 4k (longest measured: 2k)." in found
    assert paper.figure_findings(df, "official")[-1] == (
        "No measurement of ours to set beside theirs for: xformers.")
    assert len(paper.figure_findings(df, "tokens")) == 2
