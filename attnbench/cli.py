"""The command line: ``attnbench list | run | report | plot | env``."""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path
from typing import Annotated

import torch
import typer
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
from typer.core import TyperCommand, TyperGroup

from attnbench import envinfo, records, registry
from attnbench.errors import UsageError
from attnbench.interrupts import exit_code, signal_name
from attnbench.plots import FORMATS
from attnbench.report import print_report
from attnbench.runner import CudaContextLost, default_run_dir, run_sweep
from attnbench.spec import PRESETS, SweepSpec, build_spec


class _FlagsWithoutType:
    """Help without a ``<bool>`` type after flags that take no value (typer 0.29 prints one)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class _Group(_FlagsWithoutType, TyperGroup):
    pass


class _Command(_FlagsWithoutType, TyperCommand):
    pass


app = typer.Typer(
    help="Benchmark attention mechanisms (softmax and linear) as sequences grow.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=_Group,
)
# Wide tables stay whole in logs and pipes (rich assumes 80 columns when not on a terminal).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

def _device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {choice!r}; choose auto, cpu or cuda")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA GPU here")
    return choice


def _load(run_dir: Path, strict: bool):
    """records.load, with damaged lines reported as one warning (``--strict``: exit 2), and
    cases recorded more than once as another."""
    df = records.load(run_dir, strict=strict)
    problems = df.attrs.get("problems", [])
    if problems:
        err_console.print(f"[yellow]warning:[/] {escape(str(run_dir))}: {len(problems)} damaged "
                          f"line(s) in {records.JSONL_FILE} left out: "
                          f"{escape('; '.join(problems[:3]))}" + (" ..." if len(problems) > 3 else ""),
                          highlight=False, soft_wrap=True)
    if df.attrs.get("duplicates"):  # two writers before the lock existed, or joined files
        err_console.print(f"[yellow]warning:[/] {escape(str(run_dir))}: "
                          f"{escape(records.duplicates_line(df.attrs['duplicated_cases']))} "
                          "(--strict: exit 2)", highlight=False, soft_wrap=True)
    return df


@app.command("list", cls=_Command)
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
        text = escape(r["summary"]) if r["available"] else f"[red]{escape(r['reason'])}[/]"
        if r["available"] and r["reason"]:  # which implementation will run, and why
            text += f"\n[dim]{escape(r['reason'])}[/]"
        table.add_row(r["name"], r["family"], ok, "yes" if r["decay"] else "",
                      "yes" if r["backward"] else "", text)
    console.print(table)


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console, transient=False)


# The sweep options of `run`, declared once: `profile` takes the same.
_Preset = Annotated[str | None, typer.Option(help=f"One of {', '.join(PRESETS)}; default: quick on a GPU, cpu without.")]
_Mechanisms = Annotated[str | None, typer.Option(help="Names or families (softmax, linear), comma separated, or all (every one that runs on the device); default the preset's: quick runs lightning2, lightning1, flash2, sdpa-cudnn and linear-cumsum, the others all.")]
_SeqLens = Annotated[str | None, typer.Option(help="e.g. 1k..256k (doubling) or 1k,3k,8192.")]
_Batch = Annotated[str | None, typer.Option(help="Batch sizes, e.g. 1,4.")]
_Heads = Annotated[str | None, typer.Option(help="Head counts, e.g. 16,32.")]
_HeadDim = Annotated[str | None, typer.Option(help="q/k head dims D, e.g. 64,128.")]
_ValueDim = Annotated[str | None, typer.Option(help="v head dims E (default: = head dim), e.g. 64,256.")]
_Dtype = Annotated[str | None, typer.Option(help="fp16, bf16, fp32, comma separated.")]
_Modes = Annotated[str | None, typer.Option(help="fwd, bwd (backward alone), fwdbwd.")]
_Decay = Annotated[bool | None, typer.Option("--decay/--no-decay", help="Per-head decay for linear mechanisms that take it.", show_default=False)]
_MaxCaseSeconds = Annotated[float | None, typer.Option(help="Skip cases predicted to take longer to measure.")]
_LineSeconds = Annotated[float | None, typer.Option(help="Seconds one line (mechanism, mode, shape) may spend over its lengths; 0 = no limit.")]
_Device = Annotated[str, typer.Option(help="auto, cuda or cpu.")]
_Out = Annotated[Path | None, typer.Option(help="Run directory (default results/<name>).")]
_Name = Annotated[str | None, typer.Option(help="Run name under results/.")]


@app.command(cls=_Command)
def run(
    preset: _Preset = None,
    mechanisms: _Mechanisms = None,
    seq_lens: _SeqLens = None,
    batch: _Batch = None,
    heads: _Heads = None,
    head_dim: _HeadDim = None,
    value_dim: _ValueDim = None,
    dtype: _Dtype = None,
    modes: _Modes = None,
    decay: _Decay = None,
    max_case_seconds: _MaxCaseSeconds = None,
    line_seconds: _LineSeconds = None,
    device: _Device = "auto",
    out: _Out = None,
    name: _Name = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory; its sweep is kept.")] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write plots at the end.")] = True,
    world_sizes: Annotated[str | None, typer.Option(help="Sequence-parallel mechanisms: run each case on each of these numbers of ranks (the run's first ranks), e.g. 1,2,4; default all of them.")] = None,
    gpus: Annotated[int | None, typer.Option(help="Shard the sweep over N processes, one per GPU (on the CPU, N processes), started through torch.distributed.run: the same as torchrun --nproc-per-node N -m attnbench run ...")] = None,
) -> None:
    """Run a sweep: records appended per case, then a table, tidy files and plots.

    Under torchrun (or with --gpus N) the cases are shared by the ranks and merged into one run directory; sequence-parallel mechanisms (lightning2-sp, sdpa-ring), named outright, run each case over all ranks together.
    """
    from attnbench import sharded

    sweep_options = dict(preset=preset, mechanisms=mechanisms, seq_lens=seq_lens, batch=batch,
                         heads=heads, head_dims=head_dim, value_dims=value_dim, dtypes=dtype,
                         modes=modes, decay=decay, max_case_seconds=max_case_seconds,
                         line_seconds=line_seconds, world_sizes=world_sizes)
    if gpus is not None:
        _launch_ranks(gpus, device, resume, sweep_options)
        return
    dev = _device(device)
    if sharded.environment_note():
        err_console.print(f"[dim]{escape(sharded.environment_note())}[/]", highlight=False)
    if sharded.launched() and not sharded.by_torchrun() and sharded.group_from_env()[0] == 0:
        err_console.print(escape(sharded.joining_line()), highlight=False, soft_wrap=True)
    ranks = sharded.init(dev) if sharded.launched() else None
    executor = sharded.ShardedExecutor(ranks) if ranks is not None else None
    spec, run_dir, shown = _spec_and_dir(
        resume, any(v is not None for v in sweep_options.values()), out, name, dev,
        lambda: build_spec(device=dev, **sweep_options))
    if ranks is not None and ranks.rank != 0:  # one display: rank 0's
        try:
            run_sweep(spec, run_dir, resume=resume is not None, executor=executor)
        except (KeyboardInterrupt, CudaContextLost) as exc:
            raise typer.Exit(exit_code(exc) if isinstance(exc, KeyboardInterrupt) else 1) from None
        return
    if ranks is not None:
        console.print(f"sharded over {ranks.world} rank(s) on {dev}: one journal per rank, "
                      "merged at the end", highlight=False)
    if dev == "cpu":
        console.print("[bold yellow]No GPU in use: running on the CPU[/] (preset "
                      f"{escape(repr(shown.preset))}); times are CPU times, not GPU numbers.")
        chosen = {m.name for m in registry.select(shown.mechanisms, dev)}
        skipped = [m.name for m in registry.MECHANISMS
                   if m.name not in chosen and dev not in m.devices]
        if skipped and shown.mechanisms == "all":
            console.print(f"[dim]not CPU-capable, not run: {', '.join(skipped)}[/]")

    _execute(spec, run_dir, resume is not None, plot,
             "run" if ranks is None else f"run --gpus {ranks.world}",
             sweep=partial(run_sweep, executor=executor))
    _say_left_out(shown)


def _say_left_out(spec: SweepSpec) -> None:
    """After a run of a preset's own mechanisms, which mechanisms it left out and how to get
    them (the quick preset on a GPU: the peers and the slow references)."""
    from attnbench.spec import left_out

    missing = left_out(spec)
    if missing:
        console.print(f"not in the {escape(spec.preset)} preset (slow to start on a fresh "
                      f"machine, or slow references): {escape(', '.join(missing))}; run them "
                      "with --mechanisms all (or --preset full), or name them with "
                      "--mechanisms", highlight=False, soft_wrap=True)


def _launch_ranks(gpus: int, device: str, resume: Path | None, sweep_options: dict) -> None:
    """``run --gpus N``: check the input here, then start N ranks of ``attnbench run`` (these
    options less --gpus) through torch.distributed.run; exit with their status."""
    from attnbench import sharded
    from attnbench.spec import expand

    if sharded.launched():
        raise UsageError("--gpus starts the ranks itself; under torchrun leave it out")
    if gpus < 1:
        raise UsageError(f"--gpus must be at least 1, not {gpus}")
    dev = _device(device)
    if dev == "cuda" and gpus > torch.cuda.device_count():
        raise UsageError(f"--gpus {gpus}: torch sees {torch.cuda.device_count()} GPU(s)")
    cores = sharded.cpu_cores()
    if dev == "cpu" and gpus > cores:
        raise UsageError(f"--gpus {gpus} on the CPU starts {gpus} processes and this machine "
                         f"gives {cores} core(s); ask for at most {cores}")
    spec = _stored_spec(resume, dev) if resume is not None else build_spec(device=dev, **sweep_options)
    sharded.with_world(expand(spec), gpus, spec.world_sizes)  # bad sizes or lengths: exit 2 here
    if dev == "cpu":
        console.print(f"[bold yellow]No GPU in use:[/] --gpus {gpus} starts {gpus} CPU "
                      "process(es) joined by gloo; times are CPU times", highlight=False)
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--gpus":
            skip = True
        elif not arg.startswith("--gpus="):
            argv.append(arg)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as launch

    args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(gpus), "-m", "attnbench", *argv])
    try:
        launch(args)
    except ChildFailedError as exc:
        codes = {f.exitcode for f in exc.failures.values()}
        raise typer.Exit(2 if codes == {2} else 1) from None


def _spec_and_dir(resume: Path | None, given: bool, out: Path | None, name: str | None,
                  dev: str, build, suffix: str = "") -> tuple[SweepSpec | None, Path, SweepSpec]:
    """(the spec for run_sweep, None when resuming; the run directory; the spec to show).

    ``given``: a sweep option was given (refused with --resume); ``build()`` makes a new spec;
    the default directory is results/<time>-<preset>-<device><suffix>."""
    if resume is not None:
        if given or out or name:
            raise UsageError("--resume takes the sweep from DIR/meta.json; give no other sweep "
                             "options")
        return None, resume, _stored_spec(resume, dev)
    if name is not None:
        _check_run_name(name)
    spec = build()
    if out is None:
        out = Path("results") / name if name else Path(f"{default_run_dir(spec)}{suffix}")
    return spec, out, spec


def _check_run_name(name: str) -> None:
    """UsageError unless ``name`` is one plain directory name (under results/)."""
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
        raise UsageError(f"--name {name!r}: a run name is one plain directory name under "
                         "results/ (no '/', not '..'); to write elsewhere use --out DIR")


def _stored_spec(run_dir: Path, dev: str) -> SweepSpec:
    """The sweep a run directory holds, to resume it here (UsageError if it ran elsewhere)."""
    stored = SweepSpec.from_json(records.read_meta(run_dir)["spec"])
    if stored.device != dev:
        raise UsageError(f"{run_dir} was run on {stored.device}; this machine runs on {dev}")
    return stored


def _execute(spec: SweepSpec | None, run_dir: Path, resume: bool, plot: bool,
             command: str, sweep=run_sweep) -> None:
    """run_sweep with a progress bar, then the tables and plots (``command``: what to tell a
    user to type to continue an interrupted run; ``sweep``: run_sweep, or a function of its
    signature that does more per case, as ``attnbench.profile.profile_sweep``)."""
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
        except KeyboardInterrupt as exc:
            progress.stop()
            _finish(run_dir, plot=False)
            err_console.print(f"interrupted ({signal_name(exc)}); records so far are in "
                              f"{escape(str(run_dir))}; continue with: attnbench {command} "
                              f"--resume {escape(str(run_dir))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exit_code(exc)) from None
        except CudaContextLost as exc:
            progress.stop()
            _finish(run_dir, plot=False)
            err_console.print(f"the CUDA context is lost ({escape(str(exc))}); records so far "
                              f"are in {escape(str(run_dir))}; continue in a new process: "
                              f"attnbench {command} --resume {escape(str(run_dir))}",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
    for line in result.repaired:
        err_console.print(f"[yellow]repaired:[/] {escape(line)}", highlight=False, soft_wrap=True)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items()))  # every rank's
    console.print(f"finished in {result.seconds:.0f} s: {summary or 'nothing to run'}")
    _finish(run_dir, plot=plot)


def _finish(run_dir: Path, plot: bool) -> None:
    try:
        df = records.load(run_dir)
    except UsageError:
        return  # nothing recorded yet
    print_report(df, console)
    if plot:
        from attnbench.plots import plot_run

        paths = plot_run(df, run_dir, title=f"attnbench run {run_dir.name}")
        findings = []
        if (df["mode"] == "train").any():  # a training-step run: TGS beside the paper's Table 1
            from attnbench import paper

            paths += paper.save_figure(df, "tgs", run_dir, title=paper.run_title(run_dir))
            findings = paper.figure_findings(df, "tgs")
        console.print("plots: " + ", ".join(escape(str(p)) for p in paths if p.suffix == ".png"),
                      highlight=False)
        for line in findings:
            console.print(f"- {line}", highlight=False, markup=False)
    console.print(f"records: {escape(str(run_dir / records.JSONL_FILE))}, "
                  f"{records.PARQUET_FILE}, {records.CSV_FILE}", highlight=False)


@app.command(cls=_Command)
def tgs(
    models: Annotated[str | None, typer.Option(help="llama, tnl, comma separated; default both.")] = None,
    size: Annotated[str | None, typer.Option(help="Model size presets: tiny, 0.4b, 1b, 3b, comma separated; default 0.4b on a GPU, tiny on the CPU.")] = None,
    mechanisms: Annotated[str | None, typer.Option(help="Attention mechanisms (or families); each goes to the models it fits (softmax: llama; linear with decay: tnl). Default on a GPU flash2,sdpa-cudnn for llama and lightning2,lightning1 for tnl; on the CPU sdpa-math and linear-masked.")] = None,
    seq_lens: Annotated[str | None, typer.Option(help="e.g. 1k..128k (doubling) or 1k,3k,8192; default 1k..128k on a GPU, 128..1k on the CPU.")] = None,
    tokens_per_step: Annotated[str | None, typer.Option(help="Tokens one training step takes (batch = tokens // length, at least 1); default the longest length, so every length trains on as many tokens.")] = None,
    checkpointing: Annotated[bool, typer.Option("--checkpointing", help="Activation checkpointing: each layer recomputed in the backward (the memory of long lengths).")] = False,
    dtype: Annotated[str | None, typer.Option(help="Precision policy: bf16 (fp32 weights and AdamW state, bf16 autocast) or fp32; default bf16 on a GPU, fp32 on the CPU.")] = None,
    max_case_seconds: Annotated[float | None, typer.Option(help="Skip lengths predicted to take longer to measure (about 16 steps); default 120 on a GPU, 10 on the CPU.")] = None,
    line_seconds: Annotated[float | None, typer.Option(help="Seconds one line (model, mechanism) may spend over its lengths; 0 = no limit.")] = None,
    device: Annotated[str, typer.Option(help="auto, cuda or cpu.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Run directory (default results/<name>).")] = None,
    name: Annotated[str | None, typer.Option(help="Run name under results/.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory; its sweep is kept.")] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write plots at the end.")] = True,
) -> None:
    """Training speed of whole models as the context grows (TGS: tokens per GPU per second).

    Real training steps of LLaMA and TransNormerLLM (forward, cross-entropy, backward, AdamW) at each length, a fixed number of tokens per step; records, a table and plots as `run` writes them, and the TGS figure beside the Lightning Attention-2 paper's Table 1.
    """
    from attnbench.spec import build_train_spec

    options = dict(models=models, sizes=size, mechanisms=mechanisms, seq_lens=seq_lens,
                   tokens_per_step=tokens_per_step, dtype=dtype,
                   max_case_seconds=max_case_seconds, line_seconds=line_seconds)
    dev = _device(device)
    spec, run_dir, shown = _spec_and_dir(
        resume, any(v is not None for v in options.values()) or checkpointing, out, name, dev,
        lambda: build_train_spec(dev, checkpointing=checkpointing, **options))
    if resume is not None and not shown.models:
        raise UsageError(f"{resume} is an operator sweep; continue it with attnbench run "
                         f"--resume {resume}")
    if dev == "cpu":
        console.print("[bold yellow]No GPU in use: training on the CPU[/] (models "
                      f"{escape(', '.join(shown.sizes))}); times are CPU times, not GPU numbers.")
    console.print(f"{shown.tokens_per_step} tokens per step, {shown.dtypes[0]}"
                  + (", activation checkpointing" if shown.checkpointing else ""), highlight=False)
    _execute(spec, run_dir, resume is not None, plot, "tgs")


@app.command(cls=_Command)
def profile(
    preset: _Preset = None,
    mechanisms: _Mechanisms = None,
    seq_lens: _SeqLens = None,
    batch: _Batch = None,
    heads: _Heads = None,
    head_dim: _HeadDim = None,
    value_dim: _ValueDim = None,
    dtype: _Dtype = None,
    modes: _Modes = None,
    decay: _Decay = None,
    max_case_seconds: _MaxCaseSeconds = None,
    line_seconds: _LineSeconds = None,
    device: _Device = "auto",
    out: _Out = None,
    name: _Name = None,
    calls: Annotated[int, typer.Option(help="Calls profiled per case, after two warm-up calls.")] = 3,
    memory_timeline: Annotated[bool, typer.Option("--memory-timeline", help="Also record PyTorch's memory history of one call per case (CUDA): snapshot pickle and PNG.")] = False,
    ncu: Annotated[bool, typer.Option("--ncu", help="Also run each case's kernels under Nsight Compute (where ncu is on the PATH): DRAM and SM throughput, occupancy, registers, local-memory traffic.")] = False,
    top: Annotated[int, typer.Option(help="Kernels shown per case (all are in kernels.parquet).")] = 12,
    resume: Annotated[Path | None, typer.Option(help="Continue the profile in this directory; its sweep is kept, the cases it had not reached are timed and profiled.")] = None,
) -> None:
    """Profile a sweep: each case is timed as by run, then profiled (torch.profiler): a Perfetto trace and a per-kernel table per case."""
    from attnbench.profile import (
        finalize_kernels,
        print_kernels,
        profile_sweep,
        refuse_unless_profile,
        unavailable_notes,
    )

    sweep_options = dict(preset=preset, mechanisms=mechanisms, seq_lens=seq_lens, batch=batch,
                         heads=heads, head_dims=head_dim, value_dims=value_dim, dtypes=dtype,
                         modes=modes, decay=decay, max_case_seconds=max_case_seconds,
                         line_seconds=line_seconds)
    if calls < 1:
        raise UsageError(f"--calls must be at least 1, not {calls}")
    if top < 1:
        raise UsageError(f"--top must be at least 1, not {top}")
    dev = _device(device)
    spec, run_dir, _ = _spec_and_dir(
        resume, any(v is not None for v in sweep_options.values()), out, name, dev,
        lambda: build_spec(device=dev, **sweep_options), suffix="-profile")
    if resume is not None:
        refuse_unless_profile(resume)
    for line in unavailable_notes(dev, memory_timeline, ncu):
        console.print(f"[yellow]{escape(line)}[/]", highlight=False)
    _execute(spec, run_dir, resume is not None, False, "profile",
             sweep=partial(profile_sweep, calls=calls, memory_timeline=memory_timeline, ncu=ncu))
    kernels = finalize_kernels(run_dir)
    if kernels is None or kernels.empty:
        console.print("no case measured ok, so none was profiled", highlight=False)
    else:
        print_kernels(kernels, console, top=top)
    if (run_dir / "profiles").is_dir():  # name only folders that exist
        console.print(f"traces: {escape(str(run_dir / 'profiles'))}; kernels: "
                      f"{escape(str(run_dir / 'kernels.parquet'))}, kernels.csv", highlight=False)


STRICT = Annotated[bool, typer.Option("--strict", help="Exit 2 if records.jsonl has a damaged line, instead of warning.")]


def _out_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None
    return path


@app.command(cls=_Command)
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    metric: Annotated[str, typer.Option(help="tokens, time, memory or all.")] = "all",
    roofline: Annotated[bool, typer.Option("--roofline", help="Instead: achieved GB/s by each mechanism's byte model and the shares of the device's measured peak bandwidth and matmul throughput.")] = False,
    strict: STRICT = False,
) -> None:
    """Print a run's tables: tokens/s, time and memory pivoted by sequence length."""
    metrics = ("tokens", "time", "memory") if metric == "all" else (metric,)
    for m in metrics:
        if m not in ("tokens", "time", "memory"):
            raise UsageError(f"unknown metric {m!r}; choose tokens, time, memory or all")
    df = _load(run_dir, strict)
    meta = records.read_meta(run_dir)
    env = meta.get("environment", {})
    packages = env.get("packages", {})
    console.print(f"[bold]{escape(str(run_dir))}[/]: {escape(meta.get('command', ''))}\n"
                  f"[dim]{escape(env.get('gpu') or 'CPU')}, torch {packages.get('torch')}, "
                  f"triton {packages.get('triton')}, commit {escape(str(env.get('git_commit')))}[/]",
                  highlight=False)
    if roofline:
        from attnbench.roofline import print_roofline

        print_roofline(df, meta, console)
        return
    print_report(df, console, metrics)


@app.command(cls=_Command)
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the figures (default: the run directory).")] = None,
    fmt: Annotated[str, typer.Option("--format", help=f"{', '.join(FORMATS)}, comma separated.")] = "png,svg",
    figure: Annotated[str, typer.Option(help="sweep (every shape and metric), roofline (arithmetic intensity against achieved TFLOP/s, with the measured roofs), paper-kernels (the paper's Fig. 3, with findings), tokens (tokens/s of every mechanism), official (against the official repository's timings) or tgs (training speed of an attnbench tgs run beside the paper's Table 1).")] = "sweep",
    strict: STRICT = False,
) -> None:
    """Plot time, tokens/s and memory against sequence length (log axes, OOM marked)."""
    formats = tuple(f.strip() for f in fmt.split(",") if f.strip())
    if not formats or any(f not in FORMATS for f in formats):
        raise UsageError(f"bad --format {fmt!r}; choose from {', '.join(FORMATS)}")
    from attnbench import paper

    if figure not in ("sweep", "roofline") and figure not in paper.FIGURES:
        raise UsageError(f"unknown figure {figure!r}; choose from sweep, roofline, "
                         f"{', '.join(paper.FIGURES)}")
    df = _load(run_dir, strict)
    from attnbench.plots import plot_run

    out_dir = _out_dir(out or run_dir)
    if figure == "roofline":
        from attnbench import roofline

        meta = records.read_meta(run_dir)
        for path in roofline.save_roofline(df, meta, out_dir, formats, paper.run_title(run_dir)):
            console.print(str(path), highlight=False, markup=False)
        for line in roofline.findings(roofline.roofline_frame(df, meta), meta):
            console.print(f"- {line}", highlight=False, markup=False)
        return
    if figure != "sweep":
        title = paper.run_title(run_dir)
        for path in paper.save_figure(df, figure, out_dir, formats, title=title):
            console.print(str(path), highlight=False, markup=False)
        for line in paper.figure_findings(df, figure):
            console.print(f"- {line}", highlight=False, markup=False)
        return
    for path in plot_run(df, out_dir, title=f"attnbench run {run_dir.name}", formats=formats):
        console.print(str(path), highlight=False, markup=False)


@app.command(cls=_Command)
def env(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The environment a run would record: GPU, driver, CUDA, torch, triton, packages."""
    info = envinfo.environment()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if key == "packages":
            value = ", ".join(f"{k} {v}" for k, v in value.items() if v)
        console.print(f"[bold]{key}[/]: {escape(str(value))}", highlight=False)


@app.command(cls=_Command)
def compare(
    base: Annotated[Path, typer.Argument(help="The baseline run directory.")],
    new: Annotated[Path, typer.Argument(help="The run directory to check against it.")],
    threshold: Annotated[float, typer.Option(help="Fail when a median time grows by more than this fraction (outside the p20-p80 spread).")] = 0.05,
    mem_threshold: Annotated[float, typer.Option(help="Fail when memory above the inputs grows by more than this fraction.")] = 0.05,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Do not fail on cases present in one run only.")] = False,
    gate: Annotated[str, typer.Option(help="Mechanisms (names or families) that can fail the comparison; the others are reported only.")] = "all",
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON instead of a table.")] = False,
    cpu_times: Annotated[bool, typer.Option("--cpu-times", help="Gate times of CPU runs too (by default reported only: on a shared CPU they drift between runs by more than any threshold). For a dedicated, quiet CPU.")] = False,
    strict: STRICT = False,
) -> None:
    """Compare two runs case by case; exit 1 on a regression of tokens/s, memory or status.

    The rule is in attnbench/compare.py: a case regresses when its median time grows by more than --threshold and the new p20 is still slower than the base p80. Times of CPU runs are reported, not gated, unless --cpu-times.
    """
    from attnbench.compare import compare_dirs, failure_lines, not_gated_lines, parse_gate, table

    result = compare_dirs(base, new, threshold, mem_threshold, allow_missing, parse_gate(gate),
                          strict=strict, cpu_times=cpu_times)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        console.print(table(result))
        counts = ", ".join(f"{n} {v}" for v, n in sorted(result.counts().items()))
        console.print(f"{len(result.cases)} cases: {counts}", highlight=False)
        for prefix, lines in (("[yellow]warning:[/]", result.warnings),
                              ("[yellow]not gated[/]", not_gated_lines(result)),
                              ("[red]FAIL[/]", failure_lines(result))):
            for line in lines:
                err_console.print(f"{prefix} {escape(line)}", highlight=False, soft_wrap=True)
    if result.failed:
        raise typer.Exit(1)


@app.command(cls=_Command)
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    fmt: Annotated[str, typer.Option("--format", help="github-action-benchmark (customBiggerIsBetter) or bencher (BMF JSON).")] = "github-action-benchmark",
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    strict: STRICT = False,
) -> None:
    """Tokens/s of every measured case as JSON for github-action-benchmark or Bencher."""
    from attnbench.export import export as export_run

    text, dropped = export_run(_load(run_dir, strict), fmt)
    if dropped:
        err_console.print(f"[yellow]left out {dropped} records that failed their correctness "
                          "check[/]", highlight=False)
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror}") from None
    err_console.print(f"wrote {escape(str(out))}", highlight=False)


def _says_errors() -> bool:
    """Every process prints its error line but the ranks other than 0 of a sharded run, whose
    line rank 0 prints (a RANK a scheduler set around one process silences nothing)."""
    import os

    from attnbench import sharded

    ranks = sharded.current()
    if ranks is not None:
        return ranks.rank == 0
    under_torchrun = sharded.launched() and sharded.by_torchrun()
    return not under_torchrun or os.environ.get("RANK") == "0"


def main() -> None:
    try:
        app()
    except UsageError as exc:
        if _says_errors():  # under torchrun the same line once, by rank 0
            err_console.print(f"attnbench: error: {escape(str(exc))}", highlight=False,
                              soft_wrap=True)
        from attnbench import sharded

        sharded.settle()  # the ranks leave together, after rank 0 said why
        sys.exit(2)
    except OSError as exc:  # a filesystem failure no command foresaw: still one line
        where = f"{exc.filename}: " if exc.filename else ""
        err_console.print(f"attnbench: error: {escape(where + (exc.strerror or str(exc)))}",
                          highlight=False, soft_wrap=True)
        sys.exit(2)
