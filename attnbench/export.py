"""A run's tokens/s in the formats of continuous-benchmarking services.

- ``github-action-benchmark``: the input of ``benchmark-action/github-action-benchmark``
  with ``tool: customBiggerIsBetter``, a JSON list of
  ``{"name", "unit", "value", "range"?, "extra"?}`` (``range`` and ``extra`` are strings:
  the action shows them in its chart tooltips).
- ``bencher``: Bencher Metric Format (BMF), ``{benchmark: {measure: {"value",
  "lower_value"?, "upper_value"?}}}``, for ``bencher run --adapter json``. Measures:
  ``throughput`` (tokens/s; Bencher's built-in ops/s measure), ``latency`` (median time in
  ns, Bencher's built-in), ``tflops`` and, on a GPU, ``extra-memory-mib``.

Only measured records (status ``ok``) whose correctness check did not fail are exported: a
wrong kernel's speed is no number to track. Bounds come from the p20/p80 spread of the
repetitions: the p20 time gives the upper tokens/s, the p80 time the lower.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from attnbench.case import Case
from attnbench.errors import UsageError

FORMATS = ("github-action-benchmark", "bencher")


def _ok(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def bench_name(row: dict) -> str:
    """``attnbench/<mechanism>/<mode>/b2-h16-n4096-d128-bf16-decay``: one case, one name."""
    case = Case.from_row(row)
    return f"attnbench/{case.mechanism}/{case.mode}/{case.label()}"


def exportable(df: pd.DataFrame) -> tuple[list[dict], int]:
    """(the rows to export, how many ok rows were left out for a failed correctness check)."""
    ok = df[df["status"] == "ok"]
    keep = ok[ok["check"] != "fail"]
    return keep.to_dict("records"), len(ok) - len(keep)


def _tokens(row: dict, time_ms: float) -> float:
    return row["batch"] * row["seq_len"] / (time_ms / 1e3) if _ok(time_ms) and time_ms else math.nan


def github_action_benchmark(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        hi, lo = _tokens(r, r["time_ms_p20"]), _tokens(r, r["time_ms_p80"])
        entry = dict(name=bench_name(r), unit="tokens/s", value=float(r["tokens_per_s"]))
        if _ok(hi) and _ok(lo):
            entry["range"] = f"± {(hi - lo) / 2:.4g}"
        extra = [f"median {r['time_ms']:.4g} ms (p20 {r['time_ms_p20']:.4g}, "
                 f"p80 {r['time_ms_p80']:.4g}, {r['reps']} reps)",
                 f"{r['tflops']:.4g} TFLOP/s"]
        if _ok(r["peak_mem_mib"]):
            extra.append(f"peak {r['peak_mem_mib']:.1f} MiB, {r['extra_mem_mib']:.1f} MiB "
                         "above inputs")
        if r.get("impl"):
            extra.append(f"impl {r['impl']}")
        entry["extra"] = "\n".join(extra)
        out.append(entry)
    return out


def bencher(rows: list[dict]) -> dict:
    out = {}
    for r in rows:
        tput = dict(value=float(r["tokens_per_s"]))
        lat = dict(value=r["time_ms"] * 1e6)
        hi, lo = _tokens(r, r["time_ms_p20"]), _tokens(r, r["time_ms_p80"])
        if _ok(hi) and _ok(lo):
            tput.update(lower_value=lo, upper_value=hi)
            lat.update(lower_value=r["time_ms_p20"] * 1e6, upper_value=r["time_ms_p80"] * 1e6)
        measures = {"throughput": tput, "latency": lat}
        if _ok(r["tflops"]):
            measures["tflops"] = dict(value=float(r["tflops"]))
        if _ok(r["extra_mem_mib"]):
            measures["extra-memory-mib"] = dict(value=float(r["extra_mem_mib"]))
        out[bench_name(r)] = measures
    return out


def export(df: pd.DataFrame, fmt: str) -> tuple[str, int]:
    """(the JSON text in ``fmt``, how many rows were left out). UsageError if nothing to export."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; choose from {', '.join(FORMATS)}")
    rows, dropped = exportable(df)
    if not rows:
        raise UsageError("the run has no measured (ok) records to export")
    data = github_action_benchmark(rows) if fmt == "github-action-benchmark" else bencher(rows)
    return json.dumps(data, indent=2, allow_nan=False) + "\n", dropped


def write_file(path, text: str) -> None:
    """Write the export to ``path``; UsageError if it cannot be written."""
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
