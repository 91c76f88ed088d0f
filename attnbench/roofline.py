"""The roofline of a run: how far each case is from the device's measured ceilings.

Every ok record has its achieved TFLOP/s (FLOP model) and GB/s (byte model, ``gbps``); their
ratio is the case's arithmetic intensity, FLOP per byte. The run's meta holds the device's
measured peaks (``attnbench.peaks``): a bandwidth roof (a slope: intensity x peak GB/s) and a
compute roof (the peak matmul TFLOP/s). A case's roof is the lower of the two at its
intensity; its share of that roof says how far it is from the hardware. Runs made before
peaks were recorded have none: the views say so and draw no roof, never an invented one.
Records made before the byte model existed get their GB/s from it here, from their time.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from attnbench import modes, registry
from attnbench.case import SHAPE_COLUMNS, Case
from attnbench.errors import UsageError
from attnbench.plots import DEFAULT_FORMATS, legend_below, save, shape_text, styles, suptitle
from attnbench.sizes import format_size

ROOF_COLOR = "0.25"


def peaks_of(meta: dict) -> dict | None:
    """The run's measured peaks (``bandwidth_gbps``, ``matmul_tflops``), or None."""
    peaks = meta.get("peaks")
    if isinstance(peaks, dict) and all(
            isinstance(peaks.get(k), (int, float)) and peaks[k] > 0
            for k in ("bandwidth_gbps", "matmul_tflops")):
        return peaks
    return None


def peaks_line(meta: dict) -> str:
    """One line on the run's peaks: what they are, or why there are none."""
    peaks = peaks_of(meta)
    if peaks is not None:
        return (f"measured peaks of {peaks.get('device', 'this device')}: "
                f"{peaks['bandwidth_gbps']:,.0f} GB/s copy, {peaks['matmul_tflops']:.3g} "
                f"TFLOP/s {peaks.get('matmul_dtype', '')} matmul")
    error = (meta.get("peaks") or {}).get("error") if isinstance(meta.get("peaks"), dict) else None
    if error:
        return f"no peaks: measuring them failed ({error}); shares of peak not shown"
    return ("no measured peaks in this run's meta.json (recorded before peaks were): shares "
            "of peak and roofs not shown; a new run on the device records them")


def _model_gbps(row) -> float:
    """GB/s by today's byte model, for a record made before records carried it (an operator
    call: a training step of a whole model has no byte model)."""
    if (row["status"] != "ok" or not row["time_ms"] > 0 or row["mode"] not in modes.MODES
            or row["mechanism"] not in registry.names()):
        return math.nan
    case = Case.from_row(row.to_dict())
    byte_model = modes.of(case).bytes(registry.get(case.mechanism), case)  # NaN: none
    return byte_model / (row["time_ms"] / 1e3) / 1e9


def roofline_frame(df: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """``df`` with ``gbps`` filled where missing, ``intensity`` (FLOP/byte), and, where the
    run has peaks, ``bw_share``, ``compute_share`` and ``roof_share`` (of the lower roof at
    the case's intensity); NaN where there are none. ``attrs["gbps_from_model"]``: how many
    records got their GB/s here."""
    out = df.copy()
    missing = out["gbps"].isna() & (out["status"] == "ok")
    if missing.any():
        out.loc[missing, "gbps"] = out[missing].apply(_model_gbps, axis=1)
    out["intensity"] = out["tflops"] * 1e3 / out["gbps"]
    peaks = peaks_of(meta)
    bw, top = (peaks["bandwidth_gbps"], peaks["matmul_tflops"]) if peaks else (math.nan, math.nan)
    out["bw_share"] = out["gbps"] / bw
    out["compute_share"] = out["tflops"] / top
    roof = (out["intensity"] * bw / 1e3).clip(upper=top)
    out["roof_share"] = out["tflops"] / roof
    out.attrs = dict(df.attrs, gbps_from_model=int(missing.sum()))
    return out


def findings(rf: pd.DataFrame, meta: dict) -> list[str]:
    """Per mode and mechanism, where its longest measured length stands against the roofs."""
    peaks = peaks_of(meta)
    lines = [peaks_line(meta)]
    if rf.attrs.get("gbps_from_model"):
        lines.append(f"{rf.attrs['gbps_from_model']} records predate the byte model: their GB/s "
                     "is computed from their time and today's model")
    ok = rf[(rf["status"] == "ok") & rf["intensity"].notna()]
    for (mode, mech), rows in ok.groupby(["mode", "mechanism"], sort=False):
        r = rows.sort_values("seq_len").iloc[-1]
        text = (f"{mode} {mech} at {format_size(int(r['seq_len']))}: {r['intensity']:.3g} "
                f"FLOP/byte, {r['tflops']:.3g} TFLOP/s, {r['gbps']:,.4g} GB/s")
        if peaks is not None:
            bound = ("bandwidth" if r["intensity"] * peaks["bandwidth_gbps"] / 1e3
                     < peaks["matmul_tflops"] else "compute")
            text += (f": {100 * r['roof_share']:.2g}% of its roof ({bound}-bound; "
                     f"{100 * r['bw_share']:.2g}% of peak bandwidth, "
                     f"{100 * r['compute_share']:.2g}% of peak matmul)")
        lines.append(text)
    return lines


def roofline_figure(rf: pd.DataFrame, meta: dict, title: str = ""):
    """Arithmetic intensity against achieved TFLOP/s, one panel per mode: a point per
    mechanism and length (a line joins a mechanism's lengths, its ends labelled), and the
    bandwidth and compute roofs where the run has measured peaks."""
    ok = rf[(rf["status"] == "ok") & (rf["intensity"] > 0) & (rf["tflops"] > 0)]
    if ok.empty:
        raise UsageError("no operator call measured ok to draw a roofline of (a training "
                         "step of a whole model has no byte model)")
    peaks = peaks_of(meta)
    modes = list(dict.fromkeys(ok["mode"]))
    style = styles(ok["mechanism"].unique())
    fig, axes = plt.subplots(1, len(modes), squeeze=False, figsize=(6.0 * len(modes), 5.2))
    x_lo, x_hi = ok["intensity"].min() / 3, ok["intensity"].max() * 3
    y_lo, y_hi = ok["tflops"].min() / 3, ok["tflops"].max() * 3
    extra = []
    if peaks is not None:
        bw, top = peaks["bandwidth_gbps"], peaks["matmul_tflops"]
        ridge = top * 1e3 / bw
        x_lo, x_hi = min(x_lo, ridge / 10), max(x_hi, ridge * 10)
        y_hi = max(y_hi, top * 2)
        y_lo = min(y_lo, x_lo * bw / 1e3)
        extra = [Line2D([], [], color=ROOF_COLOR, linestyle="-", label=(
            f"roofs: {bw:,.0f} GB/s copy, {top:.3g} TFLOP/s {peaks.get('matmul_dtype', '')} "
            f"matmul (measured)"))]
    for ax, mode in zip(axes[0], modes):
        part = ok[ok["mode"] == mode]
        if peaks is not None:
            xs = [x_lo, ridge, x_hi]
            ax.plot(xs, [min(top, x * bw / 1e3) for x in xs], color=ROOF_COLOR, linewidth=1.2)
        for mech, rows in part.groupby("mechanism", sort=True):
            rows = rows.sort_values("seq_len")
            st = style[mech]
            ax.plot(rows["intensity"], rows["tflops"], color=st["color"], marker=st["marker"],
                    markersize=5, linewidth=0.8, alpha=0.9)
            for _, r in rows.iloc[[0, -1]].drop_duplicates("seq_len").iterrows():
                ax.annotate(format_size(int(r["seq_len"])), (r["intensity"], r["tflops"]),
                            textcoords="offset points", xytext=(4, 3), fontsize=7,
                            color=st["color"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        ax.grid(True, which="major", alpha=0.3)
        ax.set_xlabel("arithmetic intensity (FLOP / byte, by the FLOP and byte models)")
        ax.set_ylabel("achieved TFLOP/s")
        ax.set_title(f"{mode}", fontsize=10)
    notes = [title, f"{shape_text(ok.iloc[0])}, {ok['device'].iloc[0]}"]
    if peaks is None:
        notes.append(peaks_line(meta))
    suptitle(fig, notes, width=60 * len(modes))
    legend_below(fig, ok, style, ncol=4, extra=extra)
    return fig


def save_roofline(df: pd.DataFrame, meta: dict, out_dir, formats=DEFAULT_FORMATS,
                  title: str = "") -> list:
    """One roofline figure per shape of the run (``roofline[-<shape>].<format>``)."""
    rf = roofline_frame(df, meta)
    varying = [c for c in SHAPE_COLUMNS if c != "decay" and rf[c].nunique() > 1]
    paths = []
    for key, part in rf.groupby(varying, sort=True) if varying else [((), rf)]:
        key = key if isinstance(key, tuple) else (key,)
        if not ((part["status"] == "ok") & (part["intensity"] > 0)).any():
            continue  # a shape with no measured case has no point to draw
        suffix = "-".join(f"{c}{v}" for c, v in zip(varying, key))
        paths += save(roofline_figure(part, meta, title), out_dir,
                      "roofline" + (f"-{suffix}" if suffix else ""), formats)
    if not paths:
        raise UsageError("no operator call measured ok to draw a roofline of (a training "
                         "step of a whole model has no byte model)")
    return paths


def print_roofline(df: pd.DataFrame, meta: dict, console) -> None:
    """The roofline tables of a run (GB/s, and the shares of peak where it has peaks), then
    where each mechanism stands, one line each."""
    from rich.markup import escape

    from attnbench.report import ROOFLINE_METRICS, tables

    rf = roofline_frame(df, meta)
    metrics = ROOFLINE_METRICS if peaks_of(meta) is not None else ROOFLINE_METRICS[:1]
    for metric in metrics:
        for table in tables(rf, metric):
            console.print(table)
    for line in findings(rf, meta):
        console.print(f"[dim]• {escape(line)}[/]", highlight=False)
