"""Time, tokens/s and memory against sequence length: one line per mechanism, log axes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.transforms as mtransforms  # noqa: E402
import pandas as pd  # noqa: E402

from attnbench.sizes import format_size  # noqa: E402

PANELS = [("time_ms", "time (ms, median, p20–p80 band)"),
          ("tokens_per_s", "tokens / s"),
          ("extra_mem_mib", "memory above inputs (MiB)")]
SHAPE_COLUMNS = ["batch", "heads", "head_dim", "dtype", "decay"]


def _style(mechanisms: list[str]) -> dict[str, dict]:
    cmap = plt.get_cmap("tab10" if len(mechanisms) <= 10 else "tab20")
    markers = "osD^v<>ph*"
    return {m: dict(color=cmap(i % cmap.N), marker=markers[i % len(markers)])
            for i, m in enumerate(sorted(mechanisms))}


def draw_series(ax, part: pd.DataFrame, column: str, style: dict[str, dict], band: bool) -> None:
    """One line per mechanism; OOM lengths as an x at the top edge of the panel.

    A mechanism that failed its correctness check is drawn dashed and says so in its label.
    """
    top = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    for mech, rows in part.groupby("mechanism", sort=True):
        rows = rows.sort_values("seq_len")
        ok = rows[(rows["status"] == "ok") & rows[column].notna()]
        st = style[mech]
        if len(ok):
            failed = (ok["check"] == "fail").any()  # drawn dashed: numbers not to be trusted
            ax.plot(ok["seq_len"], ok[column], color=st["color"], marker=st["marker"],
                    label=f"{mech} (failed check)" if failed else mech, markersize=4,
                    linewidth=1.5, linestyle="--" if failed else "-")
            if band and column == "time_ms":
                ax.fill_between(ok["seq_len"], ok["time_ms_p20"], ok["time_ms_p80"],
                                color=st["color"], alpha=0.2, linewidth=0)
        oom = rows[rows["status"] == "oom"]
        if len(oom):
            ax.scatter(oom["seq_len"], [0.97] * len(oom), transform=top, marker="x",
                       color=st["color"], s=40, clip_on=False,
                       label=None if len(ok) else mech)


def _finish_axis(ax, seq_lens) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(seq_lens)
    ax.set_xticklabels([format_size(int(n)) for n in seq_lens], rotation=45, fontsize=8)
    ax.minorticks_off()
    ax.set_xticks(seq_lens)
    ax.grid(True, which="major", alpha=0.3)


def plot_run(df: pd.DataFrame, out_dir: Path, title: str, formats=("png", "svg")) -> list[Path]:
    """One figure per shape (batch, heads, head dim, dtype, decay): modes x metrics panels."""
    out_dir = Path(out_dir)
    device = df["device"].iloc[0]
    panels = [p for p in PANELS if not (device == "cpu" and p[0] == "extra_mem_mib")]
    style = _style(list(df["mechanism"].unique()))
    varying = [c for c in SHAPE_COLUMNS if c != "decay" and df[c].nunique() > 1]
    paths = []
    groups = df.groupby(varying, sort=True) if varying else [((), df)]
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        modes = list(dict.fromkeys(part["mode"]))
        seq_lens = sorted(part["seq_len"].unique())
        fig, axes = plt.subplots(len(modes), len(panels), squeeze=False,
                                 figsize=(4.6 * len(panels), 3.6 * len(modes) + 0.8))
        for i, mode in enumerate(modes):
            sub = part[part["mode"] == mode]
            for j, (column, label) in enumerate(panels):
                ax = axes[i][j]
                draw_series(ax, sub, column, style, band=True)
                _finish_axis(ax, seq_lens)
                ax.set_title(f"{mode}: {label}", fontsize=10)
                if i == len(modes) - 1:
                    ax.set_xlabel("sequence length")
        first = part.iloc[0]
        shape = (f"batch {first['batch']}, heads {first['heads']}, head dim {first['head_dim']}, "
                 f"{first['dtype']}, {device}")
        fig.suptitle(f"{title}\n{shape}   (x at top = out of memory)", fontsize=11)
        handles, labels = {}, []
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in handles:
                    handles[lab] = h
                    labels.append(lab)
        if labels:
            fig.legend([handles[lab] for lab in labels], labels, loc="lower center",
                       ncol=min(len(labels), 6), fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(labels) > 6), 1, 1))
        suffix = "-".join(f"{c}{v}" for c, v in zip(varying, key))
        stem = "sweep" + (f"-{suffix}" if suffix else "")
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            fig.savefig(path, dpi=130)
            paths.append(path)
        plt.close(fig)
    return paths
