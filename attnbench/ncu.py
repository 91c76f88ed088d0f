"""Nsight Compute counters for a case's kernels, where ``ncu`` is on the PATH and may read them.

``kernel_metrics(case, device)`` runs this module as a child under ``ncu``: the child makes
the case ready (``prepare_call``), warms it up outside the profiled range, and calls it once
between ``cudaProfilerStart`` and ``cudaProfilerStop`` (``--profile-from-start off``), so
ncu replays only that call's kernels. Its raw CSV page is read back into one dict of metrics
per kernel name (the mean over that name's launches). Whatever goes wrong (no ncu, counters
the user may not read, an unknown metric, a timeout) comes back as a reason, never raised.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# ncu metric -> the column it fills in the per-kernel summary
METRICS = {
    "dram__throughput.avg.pct_of_peak_sustained_elapsed": "dram_pct",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed": "sm_pct",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "occupancy_pct",
    "launch__registers_per_thread": "registers",
    # local-memory instructions: in Triton and library kernels, register spills
    "smsp__sass_inst_executed_op_local_ld.sum": "local_loads",
    "smsp__sass_inst_executed_op_local_st.sum": "local_stores",
}
COLUMNS = list(METRICS.values())
TIMEOUT_S = 600


def unavailable(device: str) -> str:
    """Why ncu cannot run for ``device`` here, or "" if it may."""
    if device != "cuda":
        return "ncu profiles CUDA kernels; this run is on the CPU"
    if shutil.which("ncu") is None:
        return "ncu (Nsight Compute) is not on the PATH"
    return ""


def kernel_metrics(case, device: str, timeout_s: float = TIMEOUT_S) -> tuple[dict, str]:
    """({kernel name: {column: value}}, "") or ({}, why there are none)."""
    why = unavailable(device)
    if why:
        return {}, why
    exe = shutil.which("ncu")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "ncu.csv"
        cmd = [exe, "--profile-from-start", "off", "--metrics", ",".join(METRICS), "--csv",
               "--page", "raw", "--log-file", str(log), sys.executable, "-m", "attnbench.ncu",
               json.dumps(case.to_row())]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {}, f"ncu took longer than {timeout_s:g} s"
        except OSError as exc:
            return {}, f"ncu could not start: {exc.strerror}"
        text = log.read_text() if log.is_file() else ""
    metrics = parse_raw_csv(text)
    if metrics:
        return metrics, ""
    return {}, _why(text + "\n" + done.stdout + "\n" + done.stderr, done.returncode)


def _why(output: str, returncode: int) -> str:
    for line in output.splitlines():
        if "ERR_NVGPUCTRPERM" in line:
            return "ncu may not read the GPU's performance counters here (ERR_NVGPUCTRPERM)"
    for line in output.splitlines():
        if "==ERROR==" in line:
            return "ncu: " + line.split("==ERROR==", 1)[1].strip()[:200]
    if returncode:
        return f"ncu exited with status {returncode} and no kernel rows"
    return "ncu profiled no kernel (the call launched none inside the profiled range)"


def parse_raw_csv(text: str) -> dict[str, dict[str, float]]:
    """ncu's ``--csv --page raw`` output: per kernel name, the mean of each metric over its
    launches. Lines before the header (ncu's ``==PROF==`` messages) and the units row are
    skipped; values may carry thousands separators."""
    lines = [line for line in text.splitlines() if line.startswith('"')]
    rows = list(csv.DictReader(io.StringIO("\n".join(lines))))
    sums: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        name = row.get("Kernel Name") or ""
        if not name or not row.get("ID", "").strip().isdigit():
            continue  # the units row, or a row that is not a kernel
        for metric, column in METRICS.items():
            try:
                value = float((row.get(metric) or "").replace(",", ""))
            except ValueError:
                continue
            sums.setdefault(name, {}).setdefault(column, []).append(value)
    return {name: {c: sum(v) / len(v) for c, v in cols.items()} for name, cols in sums.items()}


def match(kernel: str, metrics: dict[str, dict]) -> dict | None:
    """The metrics of ``kernel`` (a torch.profiler name): the same name, else the same name
    up to its argument list (one tool may print a signature the other leaves out)."""
    if kernel in metrics:
        return metrics[kernel]
    short = kernel.split("(", 1)[0].strip()
    for name, values in metrics.items():
        if name.split("(", 1)[0].strip() == short:
            return values
    return None


def _child(case_json: str) -> None:
    """Under ncu: warm the case up, then one call inside the profiled range."""
    import torch

    from attnbench import registry
    from attnbench.case import Case
    from attnbench.prepare import prepare_call

    case = Case.from_row(json.loads(case_json))
    prepared = prepare_call(registry.get(case.mechanism), case, "cuda")
    for _ in range(2):  # compilation and autotuning stay outside the profiled range
        prepared.call()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    prepared.call()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    _child(sys.argv[1])
