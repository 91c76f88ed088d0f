"""The command line: ``attnbench list | run | report | plot | env``."""

from __future__ import annotations

import json
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
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

from attnbench import envinfo, records, registry
from attnbench.errors import UsageError
from attnbench.report import print_report
from attnbench.runner import CudaContextLost, Sweep
from attnbench.spec import PRESETS, SweepSpec, build_spec, expand

app = typer.Typer(
    help="Benchmark attention mechanisms (softmax and linear) as sequences grow.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
# Wide tables stay whole in logs and pipes (rich assumes 80 columns when not on a terminal).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

SWEEP_OPTIONS = ("mechanisms", "seq_lens", "batch", "heads", "head_dim", "dtype", "modes",
                 "decay", "max_case_seconds", "preset")


def _device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {choice!r}; choose auto, cpu or cuda")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA GPU here")
    return choice


@app.command("list")
def list_mechanisms(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of objects.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda: availability on this device.")] = "auto",
) -> None:
    """Every registered mechanism, whether it can run here, and why not."""
    dev = _device(device)
    rows = []
    for m in registry.MECHANISMS:
        avail = m.available(dev)
        rows.append(dict(name=m.name, family=m.family, available=avail.ok, reason=avail.reason,
                         devices=list(m.devices), dtypes=list(m.dtypes),
                         head_dims=list(m.head_dims), decay=m.decay, backward=m.backward,
                         layout=m.layout, package=m.package, oracle=m.oracle, summary=m.summary))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"attnbench mechanisms (availability on {dev})", title_justify="left")
    for col in ("name", "family", "available", "decay", "bwd", "summary / reason"):
        table.add_column(col, overflow="fold")
    for r in rows:
        ok = "[green]yes[/]" if r["available"] else "[red]no[/]"
        text = r["summary"] if r["available"] else f"[red]{r['reason']}[/]"
        if r["available"] and r["reason"]:  # which implementation will run, and why
            text += f"\n[dim]{r['reason']}[/]"
        table.add_row(r["name"], r["family"], ok, "yes" if r["decay"] else "",
                      "yes" if r["backward"] else "", text)
    console.print(table)


def _new_run_dir(out: Path | None, name: str | None, spec: SweepSpec) -> Path:
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("results") / (name or f"{stamp}-{spec.preset}-{spec.device}")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} already exists and is not empty; use --resume {out} to continue it")
    return out


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console, transient=False)


@app.command()
def run(
    preset: Annotated[str | None, typer.Option(help=f"One of {', '.join(PRESETS)}; default: quick on a GPU, cpu without.")] = None,
    mechanisms: Annotated[str | None, typer.Option(help="Names or families (softmax, linear), comma separated; default all that run on the device.")] = None,
    seq_lens: Annotated[str | None, typer.Option(help="e.g. 1k..256k (doubling) or 1k,3k,8192.")] = None,
    batch: Annotated[str | None, typer.Option(help="Batch sizes, e.g. 1,4.")] = None,
    heads: Annotated[str | None, typer.Option(help="Head counts, e.g. 16,32.")] = None,
    head_dim: Annotated[str | None, typer.Option(help="Head dims (q/k and v), e.g. 64,128.")] = None,
    dtype: Annotated[str | None, typer.Option(help="fp16, bf16, fp32, comma separated.")] = None,
    modes: Annotated[str | None, typer.Option(help="fwd, bwd (backward alone), fwdbwd.")] = None,
    decay: Annotated[bool | None, typer.Option("--decay/--no-decay", help="Per-head decay for linear mechanisms that take it.")] = None,
    max_case_seconds: Annotated[float | None, typer.Option(help="Skip cases predicted to take longer to measure.")] = None,
    device: Annotated[str, typer.Option(help="auto, cuda or cpu.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Run directory (default results/<name>).")] = None,
    name: Annotated[str | None, typer.Option(help="Run name under results/.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory; its sweep is kept.")] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write plots at the end.")] = True,
) -> None:
    """Run a sweep: records appended per case, then a table, tidy files and plots."""
    given = {k: v for k, v in locals().items() if k in SWEEP_OPTIONS and v is not None}
    dev = _device(device)
    done: list[records.Record] = []
    if resume is not None:
        if given or out is not None or name is not None:
            raise UsageError("--resume takes the sweep from DIR/meta.json; give no other sweep options")
        meta = records.read_meta(resume)
        spec = SweepSpec.from_json(meta["spec"])
        if spec.device != dev:
            raise UsageError(f"{resume} was run on {spec.device}; this machine runs on {dev}")
        run_dir, done = resume, records.read_records(resume)
    else:
        spec = build_spec(preset, dev, mechanisms, seq_lens, batch, heads, head_dim, dtype, modes,
                          decay, max_case_seconds)
        run_dir = _new_run_dir(out, name, spec)

    cases = expand(spec)
    chosen = {c.mechanism for c in cases}
    if dev == "cpu":
        console.print("[bold yellow]No GPU in use: running on the CPU[/] (preset "
                      f"{spec.preset!r}); times are CPU times, not GPU numbers.")
        skipped = [m.name for m in registry.MECHANISMS if m.name not in chosen]
        if skipped and spec.mechanisms == "all":
            console.print(f"[dim]not CPU-capable, not run: {', '.join(skipped)}[/]")
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume is None:
        records.write_meta(run_dir, dict(
            command=shlex.join(["attnbench", *sys.argv[1:]]), started=datetime.now().isoformat(),
            spec=spec.to_json(), environment=envinfo.environment()))

    todo = len(cases) - len({r.case().key() for r in done} & {c.key() for c in cases})
    console.print(f"{len(cases)} cases ({todo} to run) -> {run_dir}")
    counts: dict[str, int] = {}
    started = time.time()
    with records.RecordWriter(run_dir) as writer, _progress() as progress:
        task = progress.add_task("starting", total=todo)

        def emit(rec: records.Record) -> None:
            writer.write(rec)
            counts[rec.status] = counts.get(rec.status, 0) + 1
            progress.advance(task)
            if rec.status in ("oom", "error", "timeout") or rec.check == "fail":
                progress.console.print(
                    f"[yellow]{rec.mechanism} {rec.mode} n={rec.seq_len}: {rec.status}[/] "
                    f"{rec.reason}", highlight=False)

        sweep = Sweep(spec, emit, on_case=lambda text: progress.update(task, description=text))
        try:
            sweep.run(cases, done)
            progress.update(task, description="done")
        except KeyboardInterrupt:
            progress.stop()
            _finish(run_dir, plot=False)
            err_console.print(f"interrupted; records so far are in {run_dir}; "
                              f"continue with: attnbench run --resume {run_dir}")
            raise typer.Exit(130) from None
        except CudaContextLost as exc:
            progress.stop()
            _finish(run_dir, plot=False)
            err_console.print(f"the CUDA context is lost ({exc}); records so far are in "
                              f"{run_dir}; continue in a new process: attnbench run --resume {run_dir}")
            raise typer.Exit(1) from None
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    console.print(f"finished in {time.time() - started:.0f} s: {summary or 'nothing to run'}")
    _finish(run_dir, plot=plot)


def _finish(run_dir: Path, plot: bool) -> None:
    if not records.read_jsonl(run_dir):
        return
    df = records.finalize(run_dir)
    print_report(df, console)
    if plot:
        from attnbench.plots import plot_run

        paths = plot_run(df, run_dir, title=f"attnbench run {run_dir.name}")
        console.print("plots: " + ", ".join(str(p) for p in paths if p.suffix == ".png"))
    console.print(f"records: {run_dir / records.JSONL_FILE}, {records.PARQUET_FILE}, "
                  f"{records.CSV_FILE}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    metric: Annotated[str, typer.Option(help="tokens, time, memory or all.")] = "all",
) -> None:
    """Print a run's tables: tokens/s, time and memory pivoted by sequence length."""
    metrics = ("tokens", "time", "memory") if metric == "all" else (metric,)
    for m in metrics:
        if m not in ("tokens", "time", "memory"):
            raise UsageError(f"unknown metric {m!r}; choose tokens, time, memory or all")
    df = records.load(run_dir)
    meta = records.read_meta(run_dir)
    env = meta.get("environment", {})
    console.print(f"[bold]{run_dir}[/]: {meta.get('command', '')}\n"
                  f"[dim]{env.get('gpu') or 'CPU'}, torch {env.get('packages', {}).get('torch')}, "
                  f"triton {env.get('packages', {}).get('triton')}, commit {env.get('git_commit')}[/]")
    print_report(df, console, metrics)


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the figures (default: the run directory).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="png, svg or both, comma separated.")] = "png,svg",
    figure: Annotated[str, typer.Option(help="sweep (every shape and metric), paper-kernels (the paper's Fig. 3, with findings), tokens (tokens/s of every mechanism) or official (against the official repository's timings).")] = "sweep",
) -> None:
    """Plot time, tokens/s and memory against sequence length (log axes, OOM marked)."""
    formats = tuple(f.strip() for f in fmt.split(",") if f.strip())
    if not formats or any(f not in ("png", "svg", "pdf") for f in formats):
        raise UsageError(f"bad --format {fmt!r}; choose from png, svg, pdf")
    from attnbench import figures

    if figure not in figures.FIGURES:
        raise UsageError(f"unknown figure {figure!r}; choose from {', '.join(figures.FIGURES)}")
    df = records.load(run_dir)
    from attnbench.plots import plot_run

    out_dir = out or run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if figure != "sweep":
        title = figures.run_title(run_dir)
        for path in figures.save_figure(df, figure, out_dir, formats, title=title):
            console.print(str(path))
        if figure == "paper-kernels":
            for line in figures.findings(df):
                console.print(f"- {line}", highlight=False)
        return
    for path in plot_run(df, out_dir, title=f"attnbench run {run_dir.name}", formats=formats):
        console.print(str(path))


@app.command()
def env(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The environment a run would record: GPU, driver, CUDA, torch, triton, packages."""
    info = envinfo.environment()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if key == "packages":
            value = ", ".join(f"{k} {v}" for k, v in value.items() if v)
        console.print(f"[bold]{key}[/]: {value}", highlight=False)


@app.command()
def compare(
    base: Annotated[Path, typer.Argument(help="The baseline run directory.")],
    new: Annotated[Path, typer.Argument(help="The run directory to check against it.")],
    threshold: Annotated[float, typer.Option(help="Fail when a median time grows by more than this fraction (outside the p20-p80 spread).")] = 0.05,
    mem_threshold: Annotated[float, typer.Option(help="Fail when memory above the inputs grows by more than this fraction.")] = 0.05,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Do not fail on cases present in one run only.")] = False,
    gate: Annotated[str, typer.Option(help="Mechanisms (names or families) that can fail the comparison; the others are reported only.")] = "all",
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON instead of a table.")] = False,
) -> None:
    """Compare two runs case by case; exit 1 on a regression of tokens/s, memory or status.

    The rule is in attnbench/compare.py: a case regresses when its median time grows by more
    than --threshold and the new p20 is still slower than the base p80.
    """
    from attnbench.compare import compare_dirs, failure_lines, not_gated_lines, parse_gate, table

    result = compare_dirs(base, new, threshold, mem_threshold, allow_missing, parse_gate(gate))
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        console.print(table(result))
        counts = ", ".join(f"{n} {v}" for v, n in sorted(result.counts().items()))
        console.print(f"{len(result.cases)} cases: {counts}", highlight=False)
        for line in result.warnings:
            err_console.print(f"[yellow]warning:[/] {line}", highlight=False)
        for line in not_gated_lines(result):
            err_console.print(f"[yellow]not gated[/] {line}", highlight=False)
        for line in failure_lines(result):
            err_console.print(f"[red]FAIL[/] {line}", highlight=False)
    if result.failed:
        raise typer.Exit(1)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    fmt: Annotated[str, typer.Option("--format", help="github-action-benchmark (customBiggerIsBetter) or bencher (BMF JSON).")] = "github-action-benchmark",
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Tokens/s of every measured case as JSON for github-action-benchmark or Bencher."""
    from attnbench.export import export as export_run

    text, dropped = export_run(records.load(run_dir), fmt)
    if dropped:
        err_console.print(f"[yellow]left out {dropped} records that failed their correctness "
                          "check[/]", highlight=False)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        err_console.print(f"wrote {out}", highlight=False)


def main() -> None:
    try:
        app()
    except UsageError as exc:
        err_console.print(f"attnbench: error: {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
