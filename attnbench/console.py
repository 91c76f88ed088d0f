"""A sweep on a terminal: a progress bar while it runs, then its tables, files and plots.

What the commands of ``attnbench.cli`` print, kept apart from their parsing so that a
notebook or a script can show a run the same way: ``execute(spec, run_dir)`` is
``run_sweep`` with a progress bar, the report and the plots at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from attnbench import records
from attnbench.errors import UsageError
from attnbench.interrupts import exit_code, signal_name
from attnbench.report import print_report
from attnbench.runner import CudaContextLost, run_sweep

# Wide tables stay whole in logs and pipes (rich assumes 80 columns when not on a terminal).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


class Stopped(Exception):
    """A sweep stopped early (Ctrl-C, SIGTERM, SIGHUP, a lost CUDA context): said on screen;
    ``code`` is the exit status (128 + the signal for an interrupt, 1 otherwise)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def say(text: str, **kwargs) -> None:
    console.print(text, highlight=False, **kwargs)


def warn(text: str) -> None:
    err_console.print(text, highlight=False, soft_wrap=True)


def load(run_dir: Path, strict: bool) -> pd.DataFrame:
    """records.load, with damaged lines reported as one warning (``strict``: UsageError),
    and cases recorded more than once as another."""
    df = records.load(run_dir, strict=strict)
    problems = df.attrs.get("problems", [])
    if problems:
        warn(f"[yellow]warning:[/] {escape(str(run_dir))}: {len(problems)} damaged line(s) in "
             f"{records.JSONL_FILE} left out: {escape('; '.join(problems[:3]))}"
             + (" ..." if len(problems) > 3 else ""))
    if df.attrs.get("duplicates"):  # two writers before the lock existed, or joined files
        warn(f"[yellow]warning:[/] {escape(str(run_dir))}: "
             f"{escape(records.duplicates_line(df.attrs['duplicated_cases']))} (--strict: exit 2)")
    return df


def print_mechanisms(rows: list[dict], device: str) -> None:
    """``registry.listing`` as a table: availability, decay, backward, summary or reason."""
    table = Table(title=f"attnbench mechanisms (availability on {device})", title_justify="left")
    for col in ("name", "family", "available", "decay", "bwd", "summary / reason"):
        table.add_column(col, overflow="fold")
    for r in rows:
        ok = "[green]yes[/]" if r["available"] else "[red]no[/]"
        text = escape(r["summary"]) if r["available"] else f"[red]{escape(r['reason'])}[/]"
        if r["available"] and r["reason"]:  # which implementation will run, and why
            text += f"\n[dim]{escape(r['reason'])}[/]"
        table.add_row(r["name"], r["family"], ok, "yes" if r["decay"] else "",
                      "yes" if r["backward"] else "", text)
    console.print(table)


def cpu_note(spec, what: str = "running") -> None:
    """Say that a sweep runs on the CPU (its times are no GPU numbers), and for an operator
    sweep over all mechanisms, which ones it leaves out there."""
    from attnbench import registry

    if spec.models:
        console.print("[bold yellow]No GPU in use: training on the CPU[/] (models "
                      f"{escape(', '.join(spec.sizes))}); times are CPU times, not GPU numbers.")
        return
    console.print("[bold yellow]No GPU in use: running on the CPU[/] (preset "
                  f"{escape(repr(spec.preset))}); times are CPU times, not GPU numbers.")
    chosen = {m.name for m in registry.select(spec.mechanisms, "cpu")}
    skipped = [m.name for m in registry.MECHANISMS
               if m.name not in chosen and "cpu" not in m.devices]
    if skipped and spec.mechanisms == "all":
        console.print(f"[dim]not CPU-capable, not run: {', '.join(skipped)}[/]")


def start_notes(device: str, gpus: int | None = None) -> None:
    """What a run says about its processes before it starts: ``--gpus`` on the CPU, a
    scheduler's environment read as one process, a rank 0 that waits for the others."""
    from attnbench import sharded

    if gpus is not None:
        if device == "cpu":
            say(f"[bold yellow]No GPU in use:[/] --gpus {gpus} starts {gpus} CPU "
                "process(es) joined by gloo; times are CPU times")
        return
    if sharded.environment_note():
        warn(f"[dim]{escape(sharded.environment_note())}[/]")
    if sharded.launched() and not sharded.by_torchrun() and sharded.group_from_env()[0] == 0:
        warn(escape(sharded.joining_line()))


def tgs_notes(device: str, spec) -> None:
    """What a training-speed sweep says before it starts: the CPU, tokens per step, precision."""
    if device == "cpu":
        cpu_note(spec)
    say(f"{spec.tokens_per_step} tokens per step, {spec.dtypes[0]}"
        + (", activation checkpointing" if spec.checkpointing else ""))


def left_out_note(spec) -> None:
    """After a run of a preset's own mechanisms, which mechanisms it left out and how to get
    them (the quick preset on a GPU: the peers and the slow references)."""
    from attnbench.spec import left_out

    missing = left_out(spec)
    if missing:
        console.print(f"not in the {escape(spec.preset)} preset (slow to start on a fresh "
                      f"machine, or slow references): {escape(', '.join(missing))}; run them "
                      "with --mechanisms all (or --preset full), or name them with "
                      "--mechanisms", highlight=False, soft_wrap=True)


def print_env(info: dict) -> None:
    """``envinfo.environment()``, one line per key."""
    for key, value in info.items():
        if key == "packages":
            value = ", ".join(f"{k} {v}" for k, v in value.items() if v)
        say(f"[bold]{key}[/]: {escape(str(value))}")


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console, transient=False)


def execute(spec, run_dir: Path, resume: bool = False, plot: bool = True,
            command: str = "run", sweep=run_sweep, quiet: bool = False) -> None:
    """``sweep(spec, run_dir, ...)`` with a progress bar, then the tables and plots.

    ``command``: what to tell a user to type to continue an interrupted run; ``sweep``:
    run_sweep, or a function of its signature (``attnbench.profile.profile_sweep``, or
    run_sweep with an executor); ``quiet``: show nothing (a rank but 0 of a sharded run).
    Stopped (after saying so) if the sweep stopped early."""
    if quiet:
        try:
            sweep(spec, run_dir, resume=resume)
        except (KeyboardInterrupt, CudaContextLost) as exc:
            raise Stopped(exit_code(exc) if isinstance(exc, KeyboardInterrupt) else 1) from None
        return
    with _progress() as progress:
        task = progress.add_task("starting", total=None)

        def on_start(path: Path, cases, todo: int) -> None:
            progress.console.print(f"{len(cases)} cases ({todo} to run) -> {escape(str(path))}",
                                   highlight=False)
            # records written before this (cases a killed process left, recorded as errors)
            # are not among the todo cases: the bar counts from here
            progress.update(task, total=todo, completed=0)

        def on_record(rec: records.Record) -> None:
            progress.advance(task)
            if rec.status in ("oom", "error", "timeout") or rec.check == "fail":
                c = rec.case
                progress.console.print(
                    f"[yellow]{escape(c.mechanism)} {c.mode} n={c.seq_len}: {rec.status}[/] "
                    f"{escape(rec.reason)}", highlight=False)

        try:
            result = sweep(spec, run_dir, resume=resume, on_record=on_record,
                           on_start=on_start,
                           on_status=lambda text: progress.update(task, description=text))
            progress.update(task, description="done")
        except (KeyboardInterrupt, CudaContextLost) as exc:
            progress.stop()
            finish(run_dir, plot=False)
            lost = isinstance(exc, CudaContextLost)
            what = (f"the CUDA context is lost ({escape(str(exc))}); records so far are in "
                    f"{escape(str(run_dir))}; continue in a new process:" if lost else
                    f"interrupted ({signal_name(exc)}); records so far are in "
                    f"{escape(str(run_dir))}; continue with:")
            warn(f"{what} attnbench {command} --resume {escape(str(run_dir))}")
            raise Stopped(1 if lost else exit_code(exc)) from None
    for line in result.repaired:
        warn(f"[yellow]repaired:[/] {escape(line)}")
    summary = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items()))  # every rank's
    console.print(f"finished in {result.seconds:.0f} s: {summary or 'nothing to run'}")
    if result.not_started:
        case, need = result.not_started[0]
        why = f"predicted {need:.1f} s" if need > 0 else "the limit had passed"
        warn(f"[yellow]time limit:[/] {len(result.not_started)} case(s) not started (the first, "
             f"{escape(case.mechanism)} {case.mode} n={case.seq_len}, {why}); "
             f"continue with: attnbench {command} --resume {escape(str(run_dir))}")
    finish(run_dir, plot=plot, df=result.table)


def finish(run_dir: Path, plot: bool, df: pd.DataFrame | None = None) -> None:
    """The report of a run (``df``: its records, if at hand), its plots and where its files
    are."""
    if df is None:
        try:
            df = records.load(run_dir)
        except UsageError:
            return  # nothing recorded yet
    print_report(df, console)
    if plot:
        from attnbench.paper import run_figures

        paths, findings = run_figures(df, run_dir)
        say("plots: " + ", ".join(escape(str(p)) for p in paths if p.suffix == ".png"))
        for line in findings:
            say(f"- {line}", markup=False)
    say(f"records: {escape(str(run_dir / records.JSONL_FILE))}, {records.PARQUET_FILE}, "
        f"{records.CSV_FILE}")
