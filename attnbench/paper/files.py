"""The paper's figures as files, and the sentences that go with each (for ``attnbench plot``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from attnbench.decode_figure import decode_figure, decode_findings
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
    "decode": ("decode", lambda df, title: decode_figure(df, title=title), decode_findings),
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


def plot_formats(fmt: str, figure: str) -> tuple[str, ...]:
    """``attnbench plot --format``'s formats, once ``figure`` is known; UsageError else."""
    from attnbench.errors import UsageError
    from attnbench.plots import FORMATS

    formats = tuple(f.strip() for f in fmt.split(",") if f.strip())
    if not formats or any(f not in FORMATS for f in formats):
        raise UsageError(f"bad --format {fmt!r}; choose from {', '.join(FORMATS)}")
    if figure not in ("sweep", "roofline") and figure not in FIGURES:
        raise UsageError(f"unknown figure {figure!r}; choose from sweep, roofline, "
                         f"{', '.join(FIGURES)}")
    return formats


def draw(df: pd.DataFrame, figure: str, run_dir: Path, out_dir: Path,
         formats=DEFAULT_FORMATS) -> tuple[list[Path], list[str]]:
    """``attnbench plot``: one figure of a run (``sweep``, ``roofline`` or one of
    ``FIGURES``) into ``out_dir``; the paths written and what the figure's data say."""
    from attnbench.errors import UsageError
    from attnbench.plots import plot_run

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out_dir}: {exc.strerror}") from None
    if figure == "sweep":
        return plot_run(df, out_dir, title=f"attnbench run {run_dir.name}", formats=formats), []
    if figure == "roofline":
        from attnbench import roofline
        from attnbench.records import read_meta

        meta = read_meta(run_dir)
        paths = roofline.save_roofline(df, meta, out_dir, formats, run_title(run_dir))
        return paths, roofline.findings(roofline.roofline_frame(df, meta), meta)
    paths = save_figure(df, figure, out_dir, formats, title=run_title(run_dir))
    return paths, figure_findings(df, figure)


def run_figures(df: pd.DataFrame, run_dir: Path) -> tuple[list[Path], list[str]]:
    """What the end of a run draws into its directory: the sweep plots, then each figure its
    modes ask for (``Mode.figures``: a training-step run, TGS beside the paper's Table 1);
    the paths written and the figures' findings."""
    from attnbench import modes
    from attnbench.plots import plot_run

    run_dir = Path(run_dir)
    paths = plot_run(df, run_dir, title=f"attnbench run {run_dir.name}")
    found = []
    for figure in modes.figures(df["mode"].unique()):
        paths += save_figure(df, figure, run_dir, title=run_title(run_dir))
        found += figure_findings(df, figure)
    return paths, found


def figure_findings(df: pd.DataFrame, figure: str) -> list[str]:
    """What the data of one of ``FIGURES`` say, computed from the records."""
    return _known(figure)[2](df)
