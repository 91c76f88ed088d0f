"""The Lightning Attention-2 paper's figures and findings, redrawn from a run's records.

Every function takes the tidy frame of ``attnbench.records.load``; notebooks and
``attnbench plot --figure`` call only these. One idea per module:

- ``selection``: the paper's mechanisms, names and shape; the rows of one shape.
- ``kernel_figure``: Fig. 3 (runtime and memory of forward and backward against length).
- ``tokens_figure``: tokens/s of every mechanism of the run.
- ``sentences``: the findings, computed from the data.
- ``official``: the official repository's published timings joined to ours.
- ``comparison_figure``: that comparison drawn.
- ``tgs``: training speed of whole models against length beside the paper's Table 1.
- ``files``: the figures as files and their sentences, by name (``FIGURES``).
"""

from attnbench.paper.comparison_figure import official_figure
from attnbench.paper.files import (
    FIGURES,
    draw,
    figure_findings,
    plot_formats,
    run_figures,
    run_title,
    save_figure,
)
from attnbench.paper.kernel_figure import paper_kernels
from attnbench.paper.official import official_operator_ms, official_summary, official_table
from attnbench.paper.selection import PAPER_MECHANISMS, label, one_shape
from attnbench.paper.sentences import findings, findings_by_panel, tokens_findings
from attnbench.paper.tgs import paper_table1, tgs_figure, tgs_findings, tgs_table
from attnbench.paper.tokens_figure import tokens_per_second

__all__ = ["FIGURES", "PAPER_MECHANISMS", "findings", "findings_by_panel", "label",
           "official_figure", "official_operator_ms", "official_summary", "official_table",
           "one_shape", "paper_kernels", "run_title", "save_figure", "figure_findings", "draw",
           "run_figures", "plot_formats",
           "tokens_findings", "tokens_per_second", "paper_table1", "tgs_figure",
           "tgs_findings", "tgs_table"]
