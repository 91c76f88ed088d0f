"""Profiles: which kernels a case runs, for how long, and a trace to open in Perfetto.

``profile_sweep(spec, out)`` is ``run_sweep`` with one more step per case: every case that
measured ``ok`` (so it is checked and timed, its record on disk) is made ready again with
``prepare_call``, warmed up, and called ``calls`` times under ``torch.profiler`` (CPU
activities, and CUDA where the run is on a GPU). Per case it writes, under ``profiles/``:

- ``<mechanism>-<mode>-<label>.trace.json.gz``: the Chrome/Perfetto trace
  (``export_chrome_trace``; opens in ui.perfetto.dev);
- rows of ``kernels.jsonl`` (then ``kernels.parquet`` and ``kernels.csv``): one per kernel
  from ``key_averages``: launches and device time per call, its share of the case's device
  time, the host's time to issue one call, the timed call's median for comparison, and where
  ``ncu`` ran, its counters (``attnbench.ncu``). On the CPU a "kernel" is an aten op and its
  device time is the op's own (self) CPU time;
- with ``memory_timeline`` (CUDA only): ``torch.cuda.memory`` history of one call, the
  snapshot pickle (for pytorch.org/memory_viz) and a PNG of allocated memory over the call.
"""

from __future__ import annotations

import json
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from attnbench import measure, records, registry
from attnbench import ncu as nsight
from attnbench.case import KEY_COLUMNS, Case
from attnbench.errors import UsageError, one_line
from attnbench.prepare import prepare_call
from attnbench.records import Record
from attnbench.runner import SweepResult, run_sweep
from attnbench.spec import SweepSpec, spec_of_run

KERNELS_JSONL, KERNELS_PARQUET, KERNELS_CSV = "kernels.jsonl", "kernels.parquet", "kernels.csv"
PROFILES_DIR = "profiles"
CALL_RANGE = "attnbench call"  # the record_function range around each profiled call
WARMUP_CALLS = 2
NAN = float("nan")
MEMORY_TIMELINE_CPU = ("--memory-timeline: unavailable on the CPU (PyTorch records allocation "
                       "history for CUDA memory only); nothing written")


@dataclass(frozen=True)
class KernelRow:
    """One kernel of one profiled case (``kernel`` "" with a ``note``: the case's profile
    failed, and the note says why)."""

    case: Case
    kernel: str
    device: str = ""  # cuda | cpu
    launches_per_call: float = NAN
    device_ms_per_call: float = NAN  # its own time on the device (CPU: self CPU time)
    share: float = NAN  # of the summed device time of the case's kernels
    host_ms_per_call: float = NAN  # the case's: host time to issue one call (profiled)
    timed_ms: float = NAN  # the case's record: the median of its timed calls
    trace: str = ""  # the case's trace, relative to the run directory
    profile_s: float = NAN  # the case's: wall time of its profile (warm-up, calls, files; no ncu)
    ncu: str = ""  # why there are no ncu columns, or "" where they were merged
    dram_pct: float = NAN
    sm_pct: float = NAN
    occupancy_pct: float = NAN
    registers: float = NAN
    local_loads: float = NAN
    local_stores: float = NAN
    note: str = ""

    def row(self) -> dict:
        row = self.case.to_row()
        row.update({k: v for k, v in asdict(self).items() if k != "case"})
        return row


KERNEL_COLUMNS = KEY_COLUMNS + [f for f in KernelRow.__dataclass_fields__ if f != "case"]


def case_stem(case: Case) -> str:
    return f"{case.mechanism}-{case.mode}-{case.label()}"


# --- one case --------------------------------------------------------------------------------


def kernel_table(prof, calls: int, device: str) -> tuple[list[dict], float]:
    """Per-kernel dicts from ``prof.key_averages()`` and the host ms per call.

    CUDA: the device's kernels (and copies), by their own device time. CPU: every op but the
    call range, by its own CPU time; so the rows add up to the call less the Python between ops.
    """
    events = prof.key_averages()
    host_ms = NAN
    rows = []
    cpu = torch.autograd.DeviceType.CPU
    for evt in events:
        if evt.key == CALL_RANGE:  # on CUDA also a GPU-side annotation: its span, not a kernel
            if evt.device_type == cpu:
                host_ms = evt.cpu_time_total / 1e3 / calls
            continue
        if getattr(evt, "is_user_annotation", False):
            continue  # ranges that libraries mark, whose time their kernels already count
        if device == "cuda":
            if evt.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = evt.self_device_time_total
        else:
            us = evt.self_cpu_time_total
        if us <= 0:
            continue
        rows.append(dict(kernel=evt.key, launches_per_call=evt.count / calls,
                         device_ms_per_call=us / 1e3 / calls))
    total = sum(r["device_ms_per_call"] for r in rows)
    for r in rows:
        r["share"] = r["device_ms_per_call"] / total if total > 0 else NAN
    rows.sort(key=lambda r: -r["device_ms_per_call"])
    return rows, host_ms


def profile_case(record: Record, run_dir: Path, calls: int = 3, memory_timeline: bool = False,
                 ncu: bool = False) -> list[KernelRow]:
    """Profile one measured case into ``run_dir``; its kernel rows (one row with a note if
    profiling it failed: nothing here raises but an interrupt)."""
    case, device = record.case, record.device
    started = time.perf_counter()
    stem = case_stem(case)
    folder = Path(run_dir) / PROFILES_DIR
    trace = folder / f"{stem}.trace.json.gz"
    base = dict(case=case, device=device, timed_ms=record.time_ms)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        prepared = prepare_call(registry.get(case.mechanism), case, device)
        for _ in range(WARMUP_CALLS):
            prepared.call()
        measure.synchronize(device)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(calls):
                with torch.profiler.record_function(CALL_RANGE):
                    prepared.call()
            measure.synchronize(device)
        prof.export_chrome_trace(str(trace))
        rows, host_ms = kernel_table(prof, calls, device)
        notes = []
        if memory_timeline and device == "cuda":
            prepared.reset_grads()
            notes.append(write_memory_timeline(prepared.call, folder / stem, title=stem))
        del prepared
    except Exception as exc:  # an OOM, a mechanism that fails here: said, the sweep goes on
        return [KernelRow(**base, kernel="", note=f"profile failed: {one_line(exc)}")]
    finally:
        measure.free_memory(device)
    seconds = time.perf_counter() - started  # the profile itself; ncu's replays apart
    metrics, why = nsight.kernel_metrics(case, device) if ncu else ({}, "")
    out = []
    for r in rows:
        found = nsight.match(r["kernel"], metrics) if metrics else None
        reason = why or ("" if found or not ncu else "ncu saw no kernel of this name")
        out.append(KernelRow(**base, **r, host_ms_per_call=host_ms,
                             trace=str(trace.relative_to(run_dir)), ncu=reason, profile_s=seconds,
                             note="; ".join(notes), **(found or {})))
    return out or [KernelRow(**base, kernel="", trace=str(trace.relative_to(run_dir)),
                             note="the profiler saw no kernel in the call")]


# --- memory over one call --------------------------------------------------------------------


def write_memory_timeline(call: Callable[[], object], stem: Path, title: str = "") -> str:
    """torch.cuda.memory history of one ``call``: ``<stem>.memory.pickle`` (the snapshot,
    for pytorch.org/memory_viz) and ``<stem>.memory.png``; a line saying what was written."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(max_entries=200_000)
    try:
        call()
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    pickle_path = stem.with_name(stem.name + ".memory.pickle")
    with open(pickle_path, "wb") as f:
        pickle.dump(snapshot, f)
    png = stem.with_name(stem.name + ".memory.png")
    peak = memory_timeline_png(snapshot, before, png, title)
    return f"memory timeline: {pickle_path.name}, {png.name} (peak {peak / 2**20:,.0f} MiB)"


def allocated_over_time(snapshot: dict, before: int) -> tuple[list[float], list[int]]:
    """(ms since the first event, bytes allocated) after each alloc and completed free of the
    snapshot's device traces, starting from ``before`` bytes."""
    events = [e for trace in snapshot.get("device_traces", []) for e in trace
              if e.get("action") in ("alloc", "free_completed")]
    events.sort(key=lambda e: e.get("time_us", 0))
    t0 = events[0].get("time_us", 0) if events else 0
    times, allocated, now = [0.0], [before], before
    for i, e in enumerate(events):
        now += e["size"] if e["action"] == "alloc" else -e["size"]
        times.append((e["time_us"] - t0) / 1e3 if "time_us" in e else float(i + 1))
        allocated.append(now)
    return times, allocated


def memory_timeline_png(snapshot: dict, before: int, path: Path, title: str = "") -> int:
    """Allocated memory over the call as a step plot; the peak in bytes."""
    import matplotlib.pyplot as plt

    from attnbench.plots import save

    times, allocated = allocated_over_time(snapshot, before)
    timed = any("time_us" in e for trace in snapshot.get("device_traces", []) for e in trace)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.step(times, [a / 2**20 for a in allocated], where="post")
    ax.axhline(before / 2**20, color="0.5", linestyle=":", label="before the call (inputs)")
    ax.set_xlabel("ms since the call's first allocation" if timed else "allocation event")
    ax.set_ylabel("allocated (MiB)")
    peak = max(allocated)
    ax.set_title(f"{title}\npeak {peak / 2**20:,.0f} MiB, {(peak - before) / 2**20:,.0f} MiB "
                 "above what the call started with", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    save(fig, path.parent, path.name.removesuffix(".png"), ("png",))
    return peak


# --- a sweep of profiles ---------------------------------------------------------------------


def unavailable_notes(device: str, memory_timeline: bool, ncu: bool) -> list[str]:
    """One line for each asked-for extra that cannot run on ``device`` here."""
    notes = []
    if memory_timeline and device != "cuda":
        notes.append(MEMORY_TIMELINE_CPU)
    if ncu and nsight.unavailable(device):
        notes.append(f"--ncu: {nsight.unavailable(device)}; the kernel rows say so, nothing "
                     "else changes")
    return notes


def profile_sweep(spec: SweepSpec | None, out: Path | str | None = None, *,
                  resume: bool = False, calls: int = 3, memory_timeline: bool = False,
                  ncu: bool = False, on_record: Callable[[Record], None] | None = None,
                  on_status: Callable[[str], None] | None = None,
                  on_start: Callable | None = None,
                  on_kernels: Callable[[list[KernelRow]], None] | None = None) -> SweepResult:
    """``run_sweep`` into ``out``, each ok case profiled as soon as its record is on disk (so
    ``resume`` profiles the cases a stopped profile had not reached); its result, and
    ``load_kernels(out)`` the kernel rows.

    ``calls``: profiled calls per case (after WARMUP_CALLS). Callbacks as ``run_sweep``'s, and
    ``on_kernels(rows)`` after each case's rows are on disk. UsageError for bad input.
    """
    if not isinstance(calls, int) or calls < 1:
        raise UsageError(f"--calls must be at least 1, not {calls!r}")
    if resume and out is not None:
        refuse_unless_profile(Path(out))
    run_dir: list[Path] = []
    budget_s: list[float] = []
    writer: list[records.RunWriter] = []  # kernels.jsonl's, locked and repaired like a journal

    def start(path: Path, cases, todo: int) -> None:
        run_dir.append(Path(path))
        budget_s.append(spec_of_run(records.read_meta(path), path).max_case_seconds)
        writer.append(records.RunWriter(path, KERNELS_JSONL))
        if on_start is not None:
            on_start(path, cases, todo)

    def after(rec: Record) -> None:
        if on_record is not None:
            on_record(rec)
        if rec.status != "ok":
            return
        if on_status is not None:
            on_status(f"profiling {rec.case.mechanism} {rec.case.mode} n={rec.case.seq_len}")
        n, note = calls_within(calls, rec.time_ms, budget_s[0])
        rows = profile_case(rec, run_dir[0], n, memory_timeline, ncu)
        if note:
            rows = [replace(r, note="; ".join(filter(None, [note, r.note]))) for r in rows]
        for row in rows:
            writer[0].write_row(row.row())
        if on_kernels is not None:
            on_kernels(rows)

    try:
        return run_sweep(spec, out, resume=resume, on_record=after, on_status=on_status,
                         on_start=start)
    finally:
        for w in writer:
            w.close()
        if run_dir:
            finalize_kernels(run_dir[0])


def calls_within(calls: int, time_ms: float, max_case_seconds: float) -> tuple[int, str]:
    """(the calls to profile of a case whose timed call takes ``time_ms``, a note if fewer
    than ``calls``): warm-up and profiled calls together stay within --max-case-seconds, one
    call at least."""
    fit = int(max_case_seconds * 1e3 / time_ms) - WARMUP_CALLS if time_ms > 0 else calls
    n = max(1, min(calls, fit))
    if n == calls:
        return n, ""
    return n, (f"profiled {n} of --calls {calls}: {calls} calls of {time_ms:.3g} ms would "
               f"exceed --max-case-seconds {max_case_seconds:g}")


def refuse_unless_profile(run_dir: Path) -> None:
    """UsageError for ``profile --resume`` of a run directory ``run`` or ``tgs`` made: it has
    no profile to continue."""
    command = str(records.read_meta(run_dir).get("command", ""))
    words = command.split()
    if "profile" in words or (run_dir / KERNELS_JSONL).is_file():
        return
    made_by = " ".join(words[:2]) or "another command"
    raise UsageError(f"{run_dir} was made by {made_by}, not attnbench profile: there is no "
                     "profile to continue; profile its sweep in a new directory with "
                     "attnbench profile and the same sweep options")


_TEXT_COLUMNS = ("kernel", "device", "trace", "ncu", "note")


def kernel_row(row) -> dict:
    """A line of kernels.jsonl checked as the journal's lines are; ValueError if it is not a
    kernel row this attnbench could have written."""
    case = records.case_from_row(row)  # a dict with a possible case, or ValueError
    out = case.to_row()
    for name in (c for c in KERNEL_COLUMNS if c not in KEY_COLUMNS):
        value = row.get(name)
        if name in _TEXT_COLUMNS:
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} is {value!r}, not a string")
            out[name] = value or ""
        elif value is None:
            out[name] = NAN
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} is {value!r}, not a finite number >= 0")
        else:
            out[name] = float(value)
    return out


def load_kernels(run_dir: Path) -> pd.DataFrame:
    """The kernel rows of a profiled run, tidy: one per kernel and case. A line that is not
    a kernel row (cut off by a crash, not UTF-8, a value of another type, an impossible case
    or a number that is infinite or negative) is left out and counted in
    ``attrs["damaged"]``."""
    path = Path(run_dir) / KERNELS_JSONL
    if not path.is_file():
        raise UsageError(f"{str(run_dir)!r} holds no profile ({KERNELS_JSONL} is missing)")
    rows, damaged = [], 0
    for line in filter(bytes.strip, path.read_bytes().splitlines()):
        try:
            rows.append(kernel_row(json.loads(line.decode("utf-8"))))
        except (ValueError, TypeError, OverflowError):  # UnicodeDecodeError is a ValueError
            damaged += 1
    df = pd.DataFrame(rows, columns=KERNEL_COLUMNS)
    df.attrs["damaged"] = damaged
    return df


def finalize_kernels(run_dir: Path) -> pd.DataFrame | None:
    """Write kernels.parquet and kernels.csv from kernels.jsonl; the frame, or None if the
    run holds no profile. UsageError if the tables cannot be written."""
    try:
        df = load_kernels(run_dir)
    except UsageError:
        return None
    records.write_tables(df, run_dir, KERNELS_PARQUET, KERNELS_CSV)
    return df


# --- on screen -------------------------------------------------------------------------------

NAME_WIDTH = 72  # long demangled kernel names are cut on screen, kept whole in the files


def print_kernels(df: pd.DataFrame, console, top: int = 12) -> None:
    """A rich table per profiled case: its ``top`` kernels by device time, ncu columns where
    merged; the caption compares the kernels' sum with the timed call."""
    from rich.markup import escape
    from rich.table import Table

    for _, rows in df.groupby(KEY_COLUMNS, sort=False):
        first = rows.iloc[0]
        case = Case.from_row(first.to_dict())
        if not first["kernel"]:
            console.print(f"[yellow]{escape(case_stem(case))}: {escape(first['note'])}[/]",
                          highlight=False)
            continue
        rows = rows.sort_values("device_ms_per_call", ascending=False)
        merged = [c for c in nsight.COLUMNS if rows[c].notna().any()]
        total = rows["device_ms_per_call"].sum()
        caption = (f"kernels sum to {total:.4g} ms a call; the timed call's median is "
                   f"{first['timed_ms']:.4g} ms ({total / first['timed_ms']:.0%}); the host "
                   f"issues a call in {first['host_ms_per_call']:.4g} ms")
        if len(rows) > top:
            caption += f"; {len(rows) - top} more kernels in {KERNELS_PARQUET}"
        caption += f"\ntrace: {first['trace']} (profiled in {first['profile_s']:.1f} s)"
        if first["ncu"] and first["ncu"] != nsight.unavailable(first["device"]):
            caption += f"\nncu: {first['ncu']}"  # said once for the run where it is general
        if first["note"]:
            caption += f"\n{first['note']}"
        device = "CPU self" if first["device"] == "cpu" else "GPU"
        table = Table(title=escape(case_stem(case)), caption=escape(caption),
                      title_justify="left", caption_justify="left")
        table.add_column("kernel", overflow="fold", max_width=NAME_WIDTH)
        table.add_column("launches/call", justify="right")
        table.add_column(f"{device} ms/call", justify="right")
        table.add_column("share", justify="right")
        for c in merged:
            table.add_column(c, justify="right")
        for _, r in rows.head(top).iterrows():
            name = r["kernel"]
            name = name if len(name) <= NAME_WIDTH else name[:NAME_WIDTH - 1] + "…"
            cells = [escape(name), f"{r['launches_per_call']:g}", f"{r['device_ms_per_call']:.4g}",
                     f"{r['share']:.1%}"]
            cells += ["" if pd.isna(r[c]) else f"{r[c]:.4g}" for c in merged]
            table.add_row(*cells)
        console.print(table)


def show_profile(run_dir: Path, console, top: int = 12) -> None:
    """The end of ``attnbench profile``: kernels.parquet and .csv written, the kernel tables
    on ``console``, and where the traces and tables are."""
    from rich.markup import escape

    kernels = finalize_kernels(run_dir)
    if kernels is None or kernels.empty:
        console.print("no case measured ok, so none was profiled", highlight=False)
    else:
        print_kernels(kernels, console, top=top)
    if (run_dir / PROFILES_DIR).is_dir():  # name only folders that exist
        console.print(f"traces: {escape(str(run_dir / PROFILES_DIR))}; kernels: "
                      f"{escape(str(run_dir / KERNELS_PARQUET))}, {KERNELS_CSV}",
                      highlight=False)
