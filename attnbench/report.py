"""Rich tables of a run: tokens/s, time and memory pivoted by sequence length."""

from __future__ import annotations

import math

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from attnbench import modes
from attnbench.case import FOLLOWS_LENGTH, view_columns
from attnbench.errors import UsageError
from attnbench.measure import HOST_BOUND_FRACTION, host_bound
from attnbench.sizes import format_size

METRICS = {
    # name: (column, title, formatter, a time: host-bound cells are marked)
    "tokens": ("tokens_per_s", "M tokens/s (higher is better)", lambda x: f"{x / 1e6:.3g}", True),
    "time": ("time_ms", "time, ms (median)", lambda x: f"{x:.3g}", True),
    "memory": ("extra_mem_mib", "memory above inputs, MiB", lambda x: f"{x:,.0f}", False),
    # the roofline (columns of attnbench.roofline.roofline_frame)
    "bandwidth": ("gbps", "GB/s (byte model)",
                  lambda x: f"{x:,.0f}" if x >= 100 else f"{x:.3g}", False),
    "bandwidth-share": ("bw_share", "% of peak bandwidth",
                        lambda x: f"{100 * x:.2g}%", False),
    "compute-share": ("compute_share", "% of peak matmul",
                      lambda x: f"{100 * x:.2g}%", False),
}
ROOFLINE_METRICS = ("bandwidth", "bandwidth-share", "compute-share")
STATUS_CELL = {"oom": "[red]OOM[/]", "error": "[red]error[/]", "unsupported": "[dim]n/a[/]",
               "skipped": "[yellow]skip[/]", "timeout": "[yellow]timeout[/]"}


def _cell(row: pd.Series, column: str, fmt, mark_host: bool) -> str:
    if row["status"] != "ok":
        return STATUS_CELL.get(row["status"], escape(row["status"]))
    value = row[column]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "[dim]–[/]"
    host = mark_host and host_bound(row.get("host_ms"), row["time_ms"])
    wide = mark_host and wide_spread(row)
    text = fmt(value) + ("*" if host else "") + ("~" if wide else "")
    return f"[red]{text}✗[/]" if row["check"] == "fail" else text


# A median whose p20..p80 spread is wider than this factor is marked "~" in time tables: on a
# shared CPU under load the repetitions of one case can span 10x.
WIDE_SPREAD = 2.0


def wide_spread(row) -> bool:
    """The repetitions' p80 is more than WIDE_SPREAD times their p20."""
    p20, p80 = row.get("time_ms_p20"), row.get("time_ms_p80")
    if p20 is None or p80 is None or not (p20 > 0) or math.isnan(p80):
        return False
    return p80 > WIDE_SPREAD * p20


def tables(df: pd.DataFrame, metric: str) -> list[Table]:
    """One table per mode for ``metric`` ("tokens", "time" or "memory")."""
    column, title, fmt, mark_host = METRICS[metric]
    varying, same = view_columns(df)
    fixed = ", ".join([f"{c}={df[c].iloc[0]}" for c in same] + _following(df))
    seq_lens = sorted(df["seq_len"].unique())
    out = []
    for mode, part in df.groupby("mode", sort=False):
        column, title, fmt, mark_host = modes.metric(mode, metric, METRICS[metric])
        if not part.loc[part["status"] == "ok", column].notna().any() and (
                part["status"] == "ok").any():
            continue  # nothing measured in this column (memory on the CPU: no allocator stats)
        caption = escape(fixed)
        if mark_host and any(host_bound(r.get("host_ms"), r["time_ms"])
                             for _, r in part.iterrows()):
            caption += (f"\n* host-bound: the host took {HOST_BOUND_FRACTION:.0%} or more of this "
                        "time to issue one call, so the number is the host's (Python, "
                        "launches) as much as the kernel's")
        if mark_host and any(wide_spread(r) for _, r in part.iterrows()):
            caption += (f"\n~ wide spread: the slowest fifth of the repetitions (p80) took more "
                        f"than {WIDE_SPREAD:g}x the fastest fifth (p20), so the median is "
                        "uncertain (a busy machine?); measure again before trusting it")
        table = Table(title=f"{mode}: {title}", caption=caption, title_justify="left",
                      caption_justify="left")
        table.add_column("mechanism", no_wrap=True)
        for c in varying:
            table.add_column(c)
        for n in seq_lens:
            table.add_column(format_size(int(n)), justify="right")
        keys = ["mechanism", *varying]
        for _, rows in part.groupby(keys, sort=False):
            by_len = {int(r["seq_len"]): r for _, r in rows.iterrows()}
            first = rows.iloc[0]
            cells = [escape(first["mechanism"]), *(escape(str(first[c])) for c in varying)]
            cells += [_cell(by_len[n], column, fmt, mark_host) if n in by_len else ""
                      for n in seq_lens]
            table.add_row(*cells)
        out.append(table)
    return out


def _following(df: pd.DataFrame) -> list[str]:
    """'batch=64 at 1k .. 1 at 64k' for each field that follows the length in these rows (a
    training step's batch at a fixed number of tokens per step)."""
    out = []
    follow = [c for mode in df["mode"].unique() for c in FOLLOWS_LENGTH.get(mode, ())]
    for col in dict.fromkeys(follow):
        by_len = df.groupby("seq_len")[col].first().sort_index()
        ends = [f"{by_len.iloc[i]} at {format_size(int(by_len.index[i]))}" for i in (0, -1)]
        out.append(f"{col}={ends[0]}" + (f" .. {ends[1]}" if len(by_len) > 1 else ""))
    return out


def notes(df: pd.DataFrame) -> list[str]:
    """One line per distinct reason a case did not give a clean number."""
    lines = []
    flagged = df[(df["status"] != "ok") | (df["check"] == "fail")]
    for (mech, mode, status, reason), group in flagged.groupby(
            ["mechanism", "mode", "status", "reason"], sort=False):
        lens = ", ".join(format_size(int(n)) for n in sorted(group["seq_len"].unique()))
        lines.append(f"{mech} {mode} {status} at {lens}: {reason}")
    return lines


def parse_metrics(metric: str) -> tuple[str, ...]:
    """The metrics ``attnbench report --metric`` names (``all``: the three); UsageError else."""
    metrics = ("tokens", "time", "memory") if metric == "all" else (metric,)
    for m in metrics:
        if m not in ("tokens", "time", "memory"):
            raise UsageError(f"unknown metric {m!r}; choose tokens, time, memory or all")
    return metrics


def print_header(run_dir, meta: dict, console: Console) -> None:
    """Which run: its directory and command, the GPU, torch, triton and commit it ran on."""
    env = meta.get("environment", {})
    packages = env.get("packages", {})
    commit = escape(str(env.get("git_commit")))
    console.print(f"[bold]{escape(str(run_dir))}[/]: {escape(meta.get('command', ''))}\n"
                  f"[dim]{escape(env.get('gpu') or 'CPU')}, torch {packages.get('torch')}, "
                  f"triton {packages.get('triton')}, commit {commit}[/]", highlight=False)


def planted_line(df: pd.DataFrame) -> str:
    """A warning for records whose calls ATTNBENCH_PLANT_SLOWDOWN slowed on purpose; ""."""
    if "planted" not in df or not (df["planted"] > 0).any():
        return ""
    which = df[df["planted"] > 0].drop_duplicates("mechanism")
    names = ", ".join(f"{r.mechanism} +{r.planted:.0%}" for r in which.itertuples())
    return (f"planted slowdown (ATTNBENCH_PLANT_SLOWDOWN, a test hook): {names}; these times "
            "are not real measurements")


def print_report(df: pd.DataFrame, console: Console, metrics=("tokens", "time", "memory")) -> None:
    if planted_line(df):
        console.print(f"[bold red]{escape(planted_line(df))}[/]", highlight=False)
    for metric in metrics:
        for table in tables(df, metric):
            console.print(table)
    checked = df[df["check"] != ""].drop_duplicates("mechanism")
    if len(checked):
        errs = ", ".join(f"{r.mechanism} {r.max_rel_err:.1e}{'' if r.check == 'pass' else ' FAIL'}"
                         for r in checked.itertuples())
        against = modes.checked_against(checked["mode"].unique())
        console.print(f"[dim]error vs {against} (✗ = failed, not to be trusted): "
                      f"{escape(errs)}[/]")
    impls = df[df["impl"] != ""].drop_duplicates(["mechanism", "impl"])
    for r in impls.itertuples():
        console.print(f"[dim]{escape(r.mechanism)} ran {escape(r.impl)}[/]", highlight=False)
    for line in notes(df):
        console.print(f"[dim]• {escape(line)}[/]", highlight=False)
