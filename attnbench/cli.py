"""The command line: ``attnbench list | run | tgs | profile | report | plot | compare | export | env``.

Each command parses its options and calls the library (``attnbench.console`` shows a sweep
on the terminal); options that several commands take are declared once, below.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from attnbench import console as screen
from attnbench import envinfo, records, registry, runner
from attnbench.cli_support import Command, Group, opt, with_options
from attnbench.errors import UsageError
from attnbench.plots import FORMATS
from attnbench.spec import PRESETS, build_spec, choose_device

app = typer.Typer(
    help="Benchmark attention mechanisms (softmax and linear) as sequences grow.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=Group,
)


# Options several commands take, declared once: name -> (annotation, default).
SWEEP = {  # run and profile: what the sweep covers (build_spec's arguments)
    "preset": (opt(str | None, f"One of {', '.join(PRESETS)}; default: quick on a GPU, cpu without."), None),
    "mechanisms": (opt(str | None, "Names or families (softmax, linear), comma separated, or all (every one that runs on the device); default the preset's: quick runs lightning2, lightning1, flash2, sdpa-cudnn and linear-cumsum, the others all."), None),
    "seq_lens": (opt(str | None, "e.g. 1k..256k (doubling) or 1k,3k,8192."), None),
    "batch": (opt(str | None, "Batch sizes, e.g. 1,4."), None),
    "heads": (opt(str | None, "Head counts, e.g. 16,32."), None),
    "head_dim": (opt(str | None, "q/k head dims D, e.g. 64,128."), None),
    "value_dim": (opt(str | None, "v head dims E (default: = head dim), e.g. 64,256."), None),
    "dtype": (opt(str | None, "fp16, bf16, fp32, comma separated."), None),
    "modes": (opt(str | None, "fwd, bwd (backward alone), fwdbwd, decode (one new token per sequence against a context of seq_len, through a KV cache or state)."), None),
    "decay": (opt(bool | None, "Per-head decay for linear mechanisms that take it.", "--decay/--no-decay", show_default=False), None),
    "max_case_seconds": (opt(float | None, "Skip cases predicted to take longer to measure."), None),
    "line_seconds": (opt(float | None, "Seconds one line (mechanism, mode, shape) may spend over its lengths; 0 = no limit."), None),
}
SPEC_NAMES = {"head_dim": "head_dims", "value_dim": "value_dims", "dtype": "dtypes"}
WHERE = {  # run, profile and tgs: the device and the run directory
    "device": (opt(str, "auto, cuda or cpu."), "auto"),
    "out": (opt(Path | None, "Run directory (default results/<name>)."), None),
    "name": (opt(str | None, "Run name under results/."), None),
}
KEEP = {  # run and tgs
    "resume": (opt(Path | None, "Continue the run in this directory; its sweep is kept."), None),
    "plot": (opt(bool, "Write plots at the end.", "--plot/--no-plot"), True),
    "time_limit": (opt(float | None, "Seconds this call may take: after them no case starts that is predicted (from its line's last length, or the other lines' at its length) to end later; those are left for --resume (one process; a fixed-length CI or GPU job)."), None),
}
STRICT = {"strict": (opt(bool, "Exit 2 if records.jsonl has a damaged line, instead of warning.", "--strict"), False)}
RUN_DIR = Annotated[Path, typer.Argument(help="A run directory.")]
AS_JSON = {"as_json": (opt(bool, "Print JSON.", "--json"), False)}


def command(*groups):
    """A command of ``app`` taking the option ``groups`` (``cli_support.with_options``)."""
    return lambda fn: app.command(cls=Command)(with_options(fn, *groups))


def _sweep_spec(shared: dict, device: str, **more):
    """(build_spec of the sweep options, whether any was given)."""
    values = {SPEC_NAMES.get(n, n): shared[n] for n in SWEEP} | more
    given = any(v is not None for v in values.values())
    return (lambda: build_spec(device=device, **values)), given


@app.command("list", cls=Command)
def list_mechanisms(
    as_json: opt(bool, "Print a JSON list of objects.", "--json") = False,
    device: opt(str, "auto, cpu or cuda: availability on this device.") = "auto",
) -> None:
    """Every registered mechanism, whether it can run here, and why not."""
    dev = choose_device(device)
    rows = registry.listing(dev)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        screen.print_mechanisms(rows, dev)


@command(SWEEP, WHERE, KEEP, ...)
def run(
    world_sizes: opt(str | None, "Sequence-parallel mechanisms: run each case on each of these numbers of ranks (the run's first ranks), e.g. 1,2,4; default all of them.") = None,
    gpus: opt(int | None, "Shard the sweep over N processes, one per GPU (on the CPU, N processes), started through torch.distributed.run: the same as torchrun --nproc-per-node N -m attnbench run ...") = None,
    shared: dict = None,
) -> None:
    """Run a sweep: records appended per case, then a table, tidy files and plots.

    Under torchrun (or with --gpus N) the cases are shared by the ranks and merged into one run directory; sequence-parallel mechanisms (lightning2-sp, sdpa-ring), named outright, run each case over all ranks together.
    """
    from attnbench import sharded

    o = shared
    dev = choose_device(o["device"])
    build, given = _sweep_spec(o, dev, world_sizes=world_sizes)
    screen.start_notes(dev, gpus)
    if o["time_limit"] is not None and gpus is not None:  # ranks: run_sweep refuses it
        raise UsageError(runner.ONE_PROCESS_LIMIT)
    if gpus is not None:
        stored = (lambda: runner.stored_spec(o["resume"], dev)) if o["resume"] else build
        raise typer.Exit(sharded.launch(gpus, dev, stored, sys.argv[1:]))
    ranks = sharded.init(dev) if sharded.launched() else None
    executor = sharded.ShardedExecutor(ranks) if ranks is not None else None
    spec, run_dir, shown = runner.plan(o["resume"], given, o["out"], o["name"], dev, build)
    quiet = ranks is not None and ranks.rank != 0  # one display: rank 0's
    if ranks is not None and not quiet:
        screen.say(f"sharded over {ranks.world} rank(s) on {dev}: one journal per rank, merged at the end")
    if dev == "cpu" and not quiet:
        screen.cpu_note(shown)
    screen.execute(spec, run_dir, o["resume"] is not None, o["plot"],
                   "run" if ranks is None else f"run --gpus {ranks.world}",
                   functools.partial(runner.run_sweep, executor=executor,
                                     time_limit=o["time_limit"]), quiet=quiet)
    if not quiet:
        screen.left_out_note(shown)


@command(..., WHERE, KEEP)
def tgs(
    models: opt(str | None, "llama, tnl, comma separated; default both.") = None,
    size: opt(str | None, "Model size presets: tiny, 0.4b, 1b, 3b, comma separated; default 0.4b on a GPU, tiny on the CPU.") = None,
    mechanisms: opt(str | None, "Attention mechanisms (or families); each goes to the models it fits (softmax: llama; linear with decay: tnl). Default on a GPU flash2,sdpa-cudnn for llama and lightning2,lightning1 for tnl; on the CPU sdpa-math and linear-masked.") = None,
    seq_lens: opt(str | None, "e.g. 1k..128k (doubling) or 1k,3k,8192; default 1k..128k on a GPU, 128..1k on the CPU.") = None,
    tokens_per_step: opt(str | None, "Tokens one training step takes (batch = tokens // length, at least 1); default the longest length, so every length trains on as many tokens.") = None,
    checkpointing: opt(bool, "Activation checkpointing: each layer recomputed in the backward (the memory of long lengths).", "--checkpointing") = False,
    dtype: opt(str | None, "Precision policy: bf16 (fp32 weights and AdamW state, bf16 autocast) or fp32; default bf16 on a GPU, fp32 on the CPU.") = None,
    max_case_seconds: opt(float | None, "Skip lengths predicted to take longer to measure (about 15 calls; 7 of half a second or more); default 120 on a GPU, 10 on the CPU.") = None,
    line_seconds: opt(float | None, "Seconds one line (model, mechanism) may spend over its lengths; 0 = no limit.") = None,
    table1: opt(bool, "The paper's Table 1 for one --size: LLaMA with flash2 and sdpa-cudnn, TNL with lightning2, lightning1 and peer-fla-chunk, 1k..64k,80k,92k,128k at 128k tokens per step (3b: 1k..32k at 32k), checkpointing; other options override.", "--table1") = False,
    shared: dict = None,
) -> None:
    """Training speed of whole models as the context grows (TGS: tokens per GPU per second).

    Real training steps of LLaMA and TransNormerLLM (forward, cross-entropy, backward, AdamW) at each length, a fixed number of tokens per step; records, a table and plots as `run` writes them, and the TGS figure beside the Lightning Attention-2 paper's Table 1.
    """
    from attnbench.spec import build_train_spec

    o = shared
    options = dict(models=models, sizes=size, mechanisms=mechanisms, seq_lens=seq_lens,
                   tokens_per_step=tokens_per_step, dtype=dtype,
                   max_case_seconds=max_case_seconds, line_seconds=line_seconds)
    dev = choose_device(o["device"])
    spec, run_dir, shown = runner.plan(
        o["resume"], any(v is not None for v in options.values()) or checkpointing or table1,
        o["out"], o["name"], dev,
        lambda: build_train_spec(dev, checkpointing=checkpointing, table1=table1, **options),
        training=True)
    screen.tgs_notes(dev, shown)
    screen.execute(spec, run_dir, o["resume"] is not None, o["plot"], "tgs",
                   functools.partial(runner.run_sweep, time_limit=o["time_limit"]))


@command(SWEEP, WHERE, ...)
def profile(
    calls: opt(int, "Calls profiled per case, after two warm-up calls.") = 3,
    memory_timeline: opt(bool, "Also record PyTorch's memory history of one call per case (CUDA): snapshot pickle and PNG.", "--memory-timeline") = False,
    ncu: opt(bool, "Also run each case's kernels under Nsight Compute (where ncu is on the PATH): DRAM and SM throughput, occupancy, registers, local-memory traffic.", "--ncu") = False,
    top: opt(int, "Kernels shown per case (all are in kernels.parquet).") = 12,
    resume: opt(Path | None, "Continue the profile in this directory; its sweep is kept, the cases it had not reached are timed and profiled.") = None,
    shared: dict = None,
) -> None:
    """Profile a sweep: each case is timed as by run, then profiled (torch.profiler): a Perfetto trace and a per-kernel table per case."""
    from attnbench import profile as profiling

    o = shared
    for name, value in (("--calls", calls), ("--top", top)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1, not {value}")
    dev = choose_device(o["device"])
    build, given = _sweep_spec(o, dev)
    spec, run_dir, _ = runner.plan(resume, given, o["out"], o["name"], dev, build,
                                   suffix="-profile")
    if resume is not None:
        profiling.refuse_unless_profile(resume)
    for line in profiling.unavailable_notes(dev, memory_timeline, ncu):
        screen.say(f"[yellow]{escape(line)}[/]")
    screen.execute(spec, run_dir, resume is not None, False, "profile", functools.partial(
        profiling.profile_sweep, calls=calls, memory_timeline=memory_timeline, ncu=ncu))
    profiling.show_profile(run_dir, screen.console, top)


@command(..., STRICT)
def report(
    run_dir: RUN_DIR,
    metric: opt(str, "tokens, time, memory or all.") = "all",
    roofline: opt(bool, "Instead: achieved GB/s by each mechanism's byte model and the shares of the device's measured peak bandwidth and matmul throughput.", "--roofline") = False,
    shared: dict = None,
) -> None:
    """Print a run's tables: tokens/s, time and memory pivoted by sequence length."""
    from attnbench.report import parse_metrics, print_header, print_report

    metrics = parse_metrics(metric)
    df = screen.load(run_dir, shared["strict"])
    meta = records.read_meta(run_dir)
    print_header(run_dir, meta, screen.console)
    if roofline:
        from attnbench.roofline import print_roofline

        print_roofline(df, meta, screen.console)
        return
    print_report(df, screen.console, metrics)


@command(..., STRICT)
def plot(
    run_dir: RUN_DIR,
    out: opt(Path | None, "Where to write the figures (default: the run directory).") = None,
    fmt: opt(str, f"{', '.join(FORMATS)}, comma separated.", "--format") = "png,svg",
    figure: opt(str, "sweep (every shape and metric), roofline (arithmetic intensity against achieved TFLOP/s, with the measured roofs), paper-kernels (the paper's Fig. 3, with findings), tokens (tokens/s of every mechanism), official (against the official repository's timings), tgs (training speed of an attnbench tgs run beside the paper's Table 1) or decode (tokens/s and the KV cache or state kept against context, a row per batch, with the crossover).") = "sweep",
    shared: dict = None,
) -> None:
    """Plot time, tokens/s and memory against sequence length (log axes, OOM marked)."""
    from attnbench import paper

    formats = paper.plot_formats(fmt, figure)  # bad input refused before anything is read
    paths, findings = paper.draw(screen.load(run_dir, shared["strict"]), figure, run_dir, out or run_dir,
                                 formats)
    for path in paths:
        screen.say(str(path), markup=False)
    for line in findings:
        screen.say(f"- {line}", markup=False)


@command(AS_JSON)
def env(shared: dict = None) -> None:
    """The environment a run would record: GPU, driver, CUDA, torch, triton, packages."""
    info = envinfo.environment()
    if shared["as_json"]:
        typer.echo(json.dumps(info, indent=2))
    else:
        screen.print_env(info)


@command(..., STRICT)
def compare(
    base: Annotated[Path, typer.Argument(help="The baseline run directory.")],
    new: Annotated[Path, typer.Argument(help="The run directory to check against it.")],
    threshold: opt(float, "Fail when a median time grows by more than this fraction (outside the p20-p80 spread).") = 0.05,
    mem_threshold: opt(float, "Fail when memory above the inputs grows by more than this fraction.") = 0.05,
    allow_missing: opt(bool, "Do not fail on cases present in one run only.", "--allow-missing") = False,
    gate: opt(str, "Mechanisms (names or families) that can fail the comparison; the others are reported only.") = "all",
    as_json: opt(bool, "Print the comparison as JSON instead of a table.", "--json") = False,
    cpu_times: opt(bool, "Gate times of CPU runs too (by default reported only: on a shared CPU they drift between runs by more than any threshold). For a dedicated, quiet CPU.", "--cpu-times") = False,
    shared: dict = None,
) -> None:
    """Compare two runs case by case; exit 1 on a regression of tokens/s, memory or status.

    The rule is in attnbench/compare.py: a case regresses when its median time grows by more than --threshold and the new p20 is still slower than the base p80. Times of CPU runs are reported, not gated, unless --cpu-times.
    """
    from attnbench.compare import compare_dirs, parse_gate, print_result

    result = compare_dirs(base, new, threshold, mem_threshold, allow_missing, parse_gate(gate),
                          strict=shared["strict"], cpu_times=cpu_times)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        print_result(result, screen.console, screen.err_console)
    if result.failed:
        raise typer.Exit(1)


@command(..., STRICT)
def export(
    run_dir: RUN_DIR,
    fmt: opt(str, "github-action-benchmark (customBiggerIsBetter) or bencher (BMF JSON).", "--format") = "github-action-benchmark",
    out: opt(Path | None, "Write to this file instead of stdout.") = None,
    shared: dict = None,
) -> None:
    """Tokens/s of every measured case as JSON for github-action-benchmark or Bencher."""
    from attnbench.export import export as export_run
    from attnbench.export import write_file

    text, dropped = export_run(screen.load(run_dir, shared["strict"]), fmt)
    if dropped:
        screen.warn(f"[yellow]left out {dropped} records that failed their correctness check[/]")
    if out is None:
        sys.stdout.write(text)
    else:
        write_file(out, text)
        screen.warn(f"wrote {escape(str(out))}")


def main() -> None:
    try:
        app()
    except screen.Stopped as stop:  # said on screen
        sys.exit(stop.code)
    except UsageError as exc:
        from attnbench import sharded

        if sharded.says_errors():  # under torchrun the same line once, by rank 0
            screen.warn(f"attnbench: error: {escape(str(exc))}")
        sharded.settle()  # the ranks leave together, after rank 0 said why
        sys.exit(2)
    except OSError as exc:  # a filesystem failure no command foresaw: still one line
        where = f"{exc.filename}: " if exc.filename else ""
        screen.warn(f"attnbench: error: {escape(where + (exc.strerror or str(exc)))}")
        sys.exit(2)
