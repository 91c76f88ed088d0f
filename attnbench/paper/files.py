"""The paper's figures as files, and the sentences that go with each (for ``attnbench plot``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from attnbench.paper.comparison_figure import official_figure
from attnbench.paper.kernel_figure import paper_kernels
from attnbench.paper.official import official_summary, official_table
from attnbench.paper.sentences import findings, tokens_findings
from attnbench.paper.tgs import tgs_figure, tgs_findings
from attnbench.paper.tokens_figure import tokens_per_second
from attnbench.plots import DEFAULT_FORMATS, save

# name: (file stem, draw(df, title) -> Figure, sentences(df) -> list[str])
FIGURES = {
    "paper-kernels": ("paper-kernels", lambda df, title: paper_kernels(df, title=title), findings),
    "tokens": ("tokens-per-second", lambda df, title: tokens_per_second(df, title=title),
               tokens_findings),
    "official": ("official-comparison", lambda df, title: official_figure(df, title=title),
                 official_summary),
    "tgs": ("tgs", lambda df, title: tgs_figure(df, title=title), tgs_findings),
}


def _known(figure: str) -> tuple:
    if figure not in FIGURES:
        raise ValueError(f"unknown figure {figure!r}; choose from {', '.join(FIGURES)}")
    return FIGURES[figure]


def run_title(run_dir: Path) -> str:
    """``<run name>: <GPU>`` from the run's meta.json, for figure titles."""
    from attnbench.records import read_meta

    env = read_meta(run_dir).get("environment", {})
    return f"{Path(run_dir).name}: {env.get('gpu') or 'CPU'}"


def save_figure(df: pd.DataFrame, figure: str, out_dir: Path, formats=DEFAULT_FORMATS,
                title: str = "") -> list[Path]:
    """Write one of ``FIGURES`` into ``out_dir`` in each of ``formats`` (``plots.FORMATS``),
    plus the table as CSV for "official"; the paths written. ValueError for an unknown
    figure or format."""
    stem, draw, _ = _known(figure)
    paths = save(draw(df, title), out_dir, stem, formats)
    if figure == "official":
        paths.append(Path(out_dir) / f"{stem}.csv")
        official_table(df).to_csv(paths[-1], index=False)
    return paths


def figure_findings(df: pd.DataFrame, figure: str) -> list[str]:
    """What the data of one of ``FIGURES`` say, computed from the records."""
    return _known(figure)[2](df)
