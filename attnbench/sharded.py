"""Sweeps over several processes: ``torchrun --nproc-per-node N -m attnbench run ...``.

One process per GPU (or N processes on the CPU), joined by torch.distributed: a gloo group
for the harness's own messages, and for CUDA an NCCL group that the sequence-parallel
mechanisms pass their tensors through. In one run directory:

1. Sequence-parallel cases first (``Mechanism.sequence_parallel``: ``lightning2-sp``,
   ``sdpa-ring``), each run by every rank together with ``world_size`` = N, each rank
   holding ``seq_len / N`` tokens. Rank 0 leads: it makes the sweep's decisions (budgets,
   OOM frontiers) and tells the others which collective step comes next (check, measure),
   so every rank calls the same collectives in the same order. Its times are the slowest
   rank's of each repetition; its memory the largest rank's; rank 0 writes its record.
2. The other cases, whole lines (a mechanism, mode and shape over its lengths) dealt to the
   ranks by predicted cost (the FLOP model, heaviest line to the least loaded rank), each
   rank alone on its own device.
3. Each rank appends to its own journal, ``records.rank<r>.jsonl`` with its own lock (a rank
   that dies costs no other rank its records); at the end rank 0 merges them into the
   directory's ``records.jsonl``, one record per case, and writes the tables.

``--resume`` continues such a run with the same number of ranks: every rank reads every
journal, so nothing recorded is run again. Each record says its ``rank`` and
``device_index``; neither is part of a case's identity.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from attnbench import check as checking
from attnbench import measure, modes, records, registry
from attnbench.case import Case
from attnbench.errors import UsageError, one_line
from attnbench.prepare import call_flops, prepare_call
from attnbench.records import Record
from attnbench.spec import SweepSpec, expand
from attnbench.sweep import LocalExecutor, Sweep, default_run_dir, prepare_dir, stamp, too_slow

TIMEOUT = timedelta(minutes=30)  # a rank stuck in a collective gives up after this
CPU_TARGET_S, CUDA_TARGET_S = 0.2, 0.1  # timed repetitions fill about this long


# What torchrun (or a scheduler) sets to name a process group; env:// needs all four.
GROUP_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# How long joining the other ranks may take before it fails with one line: a scheduler's
# RANK=0 WORLD_SIZE=2 around a single process would otherwise wait for a rank that never comes.
JOIN_TIMEOUT = timedelta(minutes=5)


def launch(gpus: int, device: str, build: Callable[[], SweepSpec], argv: list[str]) -> int:
    """``attnbench run --gpus N``: check the input here (``build()``: the sweep), then start N
    ranks of ``attnbench <argv less --gpus>`` through torch.distributed.run; their exit
    status (2 where every failed rank exited 2, as for bad input)."""
    if launched():
        raise UsageError("--gpus starts the ranks itself; under torchrun leave it out")
    if gpus < 1:
        raise UsageError(f"--gpus must be at least 1, not {gpus}")
    if device == "cuda" and gpus > torch.cuda.device_count():
        raise UsageError(f"--gpus {gpus}: torch sees {torch.cuda.device_count()} GPU(s)")
    cores = cpu_cores()
    if device == "cpu" and gpus > cores:
        raise UsageError(f"--gpus {gpus} on the CPU starts {gpus} processes and this machine "
                         f"gives {cores} core(s); ask for at most {cores}")
    spec = build()
    with_world(expand(spec), gpus, spec.world_sizes)  # bad sizes or lengths: refused here
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--gpus":
            skip = True
        elif not arg.startswith("--gpus="):
            rest.append(arg)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as run_ranks

    args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(gpus), "-m", "attnbench", *rest])
    try:
        run_ranks(args)
    except ChildFailedError as exc:
        codes = {f.exitcode for f in exc.failures.values()}
        return 2 if codes == {2} else 1
    return 0


def launched() -> bool:
    """True where the environment names a whole process group to join (RANK, WORLD_SIZE,
    MASTER_ADDR and MASTER_PORT, as torchrun sets them)."""
    return all(os.environ.get(name) for name in GROUP_ENV)


def environment_note() -> str:
    """A line for an environment that names part of a process group (a scheduler's RANK, a
    stray TORCHELASTIC_RUN_ID): the run goes on as one process. "" where there is none."""
    present = [n for n in (*GROUP_ENV, "TORCHELASTIC_RUN_ID") if os.environ.get(n)]
    if not present or launched():
        return ""
    missing = [n for n in GROUP_ENV if not os.environ.get(n)]
    return (f"{', '.join(present)} set in the environment but not {', '.join(missing)}: not a "
            "torchrun launch, so this runs as one process")


def group_from_env() -> tuple[int, int, str]:
    """(rank, world size, "addr:port") from the environment; UsageError for values that name
    no process group."""
    values = {n: os.environ.get(n, "") for n in GROUP_ENV}
    try:
        rank, world, port = (int(values[n]) for n in ("RANK", "WORLD_SIZE", "MASTER_PORT"))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and MASTER_PORT must be whole numbers, not "
                         + ", ".join(f"{n}={values[n]!r}" for n in GROUP_ENV[:2] + GROUP_ENV[3:])
                         ) from None
    if not (world >= 1 and 0 <= rank < world and 0 < port < 65536):
        raise UsageError(f"RANK={rank} WORLD_SIZE={world} MASTER_PORT={port} name no process "
                         "group (0 <= RANK < WORLD_SIZE, a port 1..65535)")
    return rank, world, f"{values['MASTER_ADDR']}:{port}"


def by_torchrun() -> bool:
    """torchrun started this process (its agent started every rank, and waits for them)."""
    return bool(os.environ.get("TORCHELASTIC_RUN_ID"))


def joining_line() -> str:
    """What a process started outside torchrun says before it waits for the other ranks."""
    rank, world, where = group_from_env()
    return (f"rank {rank} of {world} (RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are set "
            f"in the environment): waiting for the other ranks at {where}, up to "
            f"{JOIN_TIMEOUT.total_seconds():.0f} s")


def _join() -> None:
    """init_process_group from the environment, bounded by JOIN_TIMEOUT outside torchrun;
    UsageError if the other ranks do not come."""
    rank, world, where = group_from_env()
    try:
        dist.init_process_group("gloo", timeout=TIMEOUT if by_torchrun() else JOIN_TIMEOUT)
    except Exception as exc:  # the store's timeout, a refused connection, a taken port
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(f"rank {rank} could not join the {world} ranks at {where} within "
                         f"{JOIN_TIMEOUT.total_seconds():.0f} s ({first}); to run as one "
                         "process, unset RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT") from None


@dataclass(frozen=True)
class Ranks:
    """This process's place in a sharded run."""

    rank: int
    world: int
    device: str  # "cuda" | "cpu"
    device_index: int  # the GPU this rank uses; -1 on the CPU
    control: object  # the gloo group of the harness's messages
    data: object  # the group the sequence-parallel mechanisms use (NCCL on CUDA)


_RANKS: list[Ranks] = []


def current() -> Ranks | None:
    """The ranks of this process's sharded run, once ``init`` has joined them."""
    return _RANKS[0] if _RANKS else None


def init(device: str) -> Ranks:
    """Join the process group torchrun set up (gloo; NCCL too for CUDA). UsageError when the
    ranks see different kinds of device (one CUDA, another the CPU)."""
    if _RANKS:
        return _RANKS[0]
    if device == "cpu":  # lightning2-sp's kernels on the CPU: Triton's interpreter
        interpret_triton_on_cpu()
    joined_here = not dist.is_initialized()
    if joined_here:
        _join()
        atexit.register(_leave)
    rank, world = dist.get_rank(), dist.get_world_size()
    kinds = [None] * world
    dist.all_gather_object(kinds, device)
    if len(set(kinds)) > 1:
        where = ", ".join(f"rank {r} {k}" for r, k in enumerate(kinds))
        raise UsageError(f"the ranks run on different kinds of device ({where}); give every "
                         "rank the same --device")
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local % torch.cuda.device_count())
    data = dist.new_group(backend="nccl", timeout=TIMEOUT) if device == "cuda" else None
    index = torch.cuda.current_device() if device == "cuda" else -1
    # the harness's messages wait as long as a case may take, not JOIN_TIMEOUT
    control = dist.new_group(backend="gloo", timeout=TIMEOUT) if joined_here else None
    _RANKS.append(Ranks(rank, world, device, index, control, data))
    # torchrun stops the other ranks with SIGTERM when one fails: run_sweep takes it as Ctrl-C
    # (attnbench.interrupts), so the case in hand is marked abandoned and the tables written
    return _RANKS[0]


def _leave() -> None:
    """Destroy the groups this process joined before the interpreter exits: gloo's threads
    torn down by the exit itself, while a peer still talks, abort the process ("terminate
    called without an active exception", exit -6: seen on a busy 2-core machine)."""
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - leaving anyway
            pass


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, which a container or taskset sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def says_errors() -> bool:
    """Whether this process prints its error line: every process but the ranks other than 0
    of a sharded run, whose line rank 0 prints (a RANK a scheduler set around one process
    silences nothing)."""
    ranks = current()
    if ranks is not None:
        return ranks.rank == 0
    return not (launched() and by_torchrun()) or os.environ.get("RANK") == "0"


def settle(timeout: timedelta = timedelta(seconds=30)) -> None:
    """After an error every rank of the group raised (the same bad input): wait, up to
    ``timeout``, until every rank is here; then rank 0, which has said why, leaves first and
    the others after it (torchrun stops every rank the moment one exits, so a rank leaving
    first could cut rank 0 off before its line). Nothing outside a group."""
    ranks = current()
    if ranks is None:
        return
    try:
        dist.monitored_barrier(group=ranks.control, timeout=timeout, wait_all_ranks=True)
    except Exception:  # a rank that never comes, a group that has no monitored barrier
        return
    if ranks.rank == 0:
        return  # rank 0 has said why: it exits first, the root cause torchrun reports
    try:  # the others wait until rank 0 has gone (its connection closes) or torchrun stops them
        dist.recv(torch.zeros(1), src=0, group=ranks.control)
    except Exception:
        pass


def interpret_triton_on_cpu() -> None:
    """TRITON_INTERPRET=1 unless the user chose otherwise: Triton reads it when a kernel is
    decorated, so it is set before attnbench.kernels is imported (UsageError if it was
    already, without it: its kernels would look for a GPU driver)."""
    import sys

    if "attnbench.kernels" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise UsageError("a CPU sharded run needs TRITON_INTERPRET=1 for lightning2-sp, and "
                         "attnbench.kernels was imported without it; set it before importing")
    os.environ.setdefault("TRITON_INTERPRET", "1")


def with_world(cases: list[Case], world: int, sizes: tuple[int, ...] = ()) -> list[Case]:
    """The sweep's cases, each sequence-parallel one split over each of ``sizes`` ranks (the
    first ranks of the run; default all ``world``), its lines kept together. UsageError for a
    size above the run's ranks, or a length the ranks cannot share evenly."""
    sizes = tuple(sizes) or (world,)
    for w in sizes:
        if not 1 <= w <= world:
            raise UsageError(f"--world-sizes {w}: this run has {world} rank(s); start it with "
                             f"at least {w}")
    out, bad, line_of = [], {}, {}
    for c in cases:
        if not registry.get(c.mechanism).sequence_parallel:
            out.append(c)
            continue
        for w in sizes:
            if c.seq_len % w:
                bad.setdefault((c.mechanism, w), []).append(c.seq_len)
            split = c.with_(world_size=w)
            line_of.setdefault(split.series(), len(line_of))
            out.append(split)
    if bad:
        (name, w), lengths = next(iter(bad.items()))
        lengths = sorted(set(lengths))
        raise UsageError(f"{name} splits each sequence over {w} ranks: seq_len "
                         f"{', '.join(map(str, lengths))} {'is' if len(lengths) == 1 else 'are'}"
                         f" not a multiple of {w}; choose lengths that are")
    # a line's lengths in a row (shortest first), one world size after another
    return sorted(out, key=lambda c: line_of.get(c.series(), -1))


def deal(cases: list[Case], world: int) -> list[list[Case]]:
    """Whole lines of one-process cases to ranks, heaviest first to the least loaded rank,
    by the FLOP model; each rank's cases keep the sweep's order."""
    lines: dict[tuple, list[Case]] = {}
    for c in cases:
        lines.setdefault(c.series(), []).append(c)
    cost = {s: sum(call_flops(registry.get(c.mechanism), c) for c in line)
            for s, line in lines.items()}
    load, owner = [0.0] * world, {}
    for s in sorted(lines, key=lambda s: -cost[s]):  # stable: ties keep the sweep's order
        r = min(range(world), key=lambda r: (load[r], r))
        owner[s] = r
        load[r] += cost[s]
    return [[c for c in cases if owner[c.series()] == r] for r in range(world)]


# --- the collective steps of a sequence-parallel case -----------------------------------------


def _send(msg, ranks: Ranks):
    box = [msg]
    dist.broadcast_object_list(box, src=0, group=ranks.control)
    return box[0]


def _gather(obj, ranks: Ranks) -> list:
    out = [None] * ranks.world
    dist.all_gather_object(out, obj, group=ranks.control)
    return out


def _first_failure(outcomes: list) -> str:
    for r, o in enumerate(outcomes):
        if isinstance(o, str):
            return o if r == 0 else f"rank {r}: {o}"
    return ""


_GROUPS: dict[int, object] = {}  # world size of a case -> the group of ranks 0..w-1


def make_groups(sizes, ranks: Ranks) -> None:
    """The process groups of the sequence-parallel cases' world sizes (every rank calls this,
    in the same order: making a group is collective)."""
    backend = "nccl" if ranks.device == "cuda" else "gloo"
    for w in sorted(set(sizes)):
        if w not in _GROUPS:
            _GROUPS[w] = (ranks.data if w == ranks.world else
                          dist.new_group(ranks=list(range(w)), backend=backend, timeout=TIMEOUT))


def _bound(mech: registry.Mechanism, ranks: Ranks, world_size: int) -> Callable:
    group = _GROUPS.get(world_size, ranks.data)
    fn = mech.callable()
    return functools.partial(fn, group=group) if group is not None else fn


class _Idle(Exception):
    """This rank holds no piece of the case (its world size is smaller than the run's)."""


def sp_check(mech: registry.Mechanism, case: Case, ranks: Ranks) -> checking.CheckResult | str:
    """``check.check`` over the ranks: every rank of the case runs its piece of
    ``check_case(case)``'s sequence against the float64 oracle of the whole; the squared sums
    are added up. A string: the first rank's exception."""
    w = case.world_size
    local = checking.check_case(case).seq_len // w
    try:
        if ranks.rank >= w:  # not one of the case's ranks: it only joins the messages
            raise _Idle
        outcome = checking.check_part(mech, case, ranks.device, _bound(mech, ranks, w),
                                      slice(ranks.rank * local, (ranks.rank + 1) * local))
    except _Idle:
        outcome = None
    except Exception as exc:
        outcome = one_line(exc)
    outcomes = _gather(outcome, ranks)
    failure = _first_failure(outcomes)
    if failure:
        return failure
    return checking.combine([o for o in outcomes if o is not None], case.dtype)


def _timed(call: Callable, device: str) -> float:
    """Seconds of one call: CUDA events on a GPU (no host sync latency in it)."""
    measure.synchronize(device)
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start_s = time.perf_counter()
    call()
    return time.perf_counter() - start_s


def sp_measure(mech: registry.Mechanism, case: Case, ranks: Ranks,
               max_case_seconds: float) -> dict:
    """Time and memory of a sequence-parallel case, every rank calling together: the same
    number of calls on each (rank 0's plan), a barrier before each timed repetition, each
    repetition's time the slowest rank's. Returns Record fields; a rank's exception becomes
    an error (or oom) for all."""
    device, w = ranks.device, case.world_size
    member = ranks.rank < w  # ranks past the case's world size only join the messages
    local = case.with_(seq_len=case.seq_len_per_rank, world_size=1)  # this rank's piece

    def agree(step: Callable[[], object]) -> list:
        """Every rank's outcome of ``step`` (the members'), or _RankFailed for all."""
        try:
            outcome = step()
        except Exception as exc:
            outcome = one_line(exc) or "error"
        outcomes = _gather(outcome, ranks)
        failure = _first_failure(outcomes)
        if failure:
            raise _RankFailed(failure)
        return outcomes[:w]

    def each(step: Callable[[], object], idle=None) -> Callable[[], object]:
        return step if member else (lambda: idle)

    prepared: list = []
    agree(each(lambda: prepared.append(
        prepare_call(mech, local, device, _bound(mech, ranks, w)))))
    call = prepared[0].call if member else (lambda: None)
    compile_s = max(agree(each(lambda: _timed(call, device))))
    estimate_s = max(agree(each(lambda: _timed(call, device))))
    values = dict(compile_s=compile_s)
    late = too_slow(estimate_s, max_case_seconds)
    if late:
        return dict(values, status="timeout", reason=late)
    target = CUDA_TARGET_S if device == "cuda" else CPU_TARGET_S
    reps = max(measure.MIN_REPS, min(200, int(target / max(estimate_s, 1e-6))))

    def repetitions() -> list[float]:
        times = []
        for _ in range(reps):
            dist.barrier(group=ranks.control)
            times.append(_timed(call, device) * 1e3 if member else 0.0)
        return times

    per_rank = agree(repetitions)
    slowest = [max(ts) for ts in zip(*per_rank)]
    timing = measure._summarise(slowest)
    if member:
        prepared[0].reset_grads()
    memory = agree(each(lambda: measure.peak_memory_mib(call, device)))
    prepared.clear()
    seconds = timing.median_ms / 1e3
    return dict(
        values, status="ok", time_ms=timing.median_ms, time_ms_p20=timing.p20_ms,
        time_ms_p80=timing.p80_ms, reps=timing.reps, tokens_per_s=case.tokens / seconds,
        tflops=call_flops(mech, case) / seconds / 1e12,
        gbps=modes.of(case).bytes(mech, case) / seconds / 1e9,
        peak_mem_mib=max(m[0] for m in memory), extra_mem_mib=max(m[1] for m in memory))


class _RankFailed(RuntimeError):
    """A rank's exception inside a collective step, the same on every rank."""


def serve(ranks: Ranks, max_case_seconds: float) -> None:
    """A rank other than 0 during the sequence-parallel cases: do the collective steps rank
    0 asks for until it says the cases are done."""
    mechs: dict[str, registry.Mechanism] = {}
    while True:
        msg = _send(None, ranks)
        if msg is None or msg[0] == "end":
            return
        step, case = msg
        mech = mechs.setdefault(case.mechanism, registry.get(case.mechanism))
        if step == "check":
            sp_check(mech, case, ranks)
        elif step == "measure":
            try:
                sp_measure(mech, case, ranks, max_case_seconds)
            except _RankFailed:
                pass
            finally:
                measure.free_memory(ranks.device)


def lead_check(mech, case, ranks):
    _send(("check", case), ranks)
    return sp_check(mech, case, ranks)


def lead_measure(mech, case, ranks, max_case_seconds):
    _send(("measure", case), ranks)
    try:
        return sp_measure(mech, case, ranks, max_case_seconds)
    except _RankFailed as exc:
        text = str(exc)
        return dict(status="oom" if "out of memory" in text.lower() else "error", reason=text)
    finally:
        measure.free_memory(ranks.device)


def end_service(ranks: Ranks) -> None:
    _send(("end", None), ranks)


# --- the run directory -----------------------------------------------------------------------


def all_records(run_dir: Path, world: int) -> list[Record]:
    """Every record of the directory: records.jsonl and each rank's journal."""
    out = list(records.read_journal(run_dir).records)
    for r in range(world):
        out += records.read_journal(run_dir, records.rank_journal(r)).records
    return out


def merge(run_dir: Path, world: int) -> int:
    """Append to records.jsonl each case the ranks' journals hold and it does not (the last
    record of a case wins); returns how many were added."""
    with records.RunWriter(run_dir) as writer:
        have = {r.case.key() for r in records.read_journal(run_dir).records}
        latest: dict[tuple, Record] = {}
        for r in range(world):
            for rec in records.read_journal(run_dir, records.rank_journal(r)).records:
                if rec.case.key() not in have:
                    latest[rec.case.key()] = rec
        for rec in latest.values():
            writer.write(rec)
    return len(latest)


# --- the sweep -------------------------------------------------------------------------------


class ShardedSweep(Sweep):
    """Sweep of one rank; on rank 0 the sequence-parallel cases' check and measurement are
    collective steps the other ranks (in ``serve``) join."""

    def __init__(self, spec, emit, ranks: Ranks, **callbacks):
        super().__init__(spec, emit, **callbacks)
        self.ranks = ranks

    def _check(self, st, case):
        if not st.mech.sequence_parallel:
            return super()._check(st, case)
        key = checking.check_case(case)
        if key not in st.checks:
            self.on_case(f"checking {st.mech.name} {case.dtype} over {self.ranks.world} "
                         "ranks vs float64")
            st.checks[key] = lead_check(st.mech, case, self.ranks)
        return st.checks[key]

    def _measure(self, mech, fn, case):
        # one rank: nothing to wait for, so timed as every one-process case is (do_bench on a
        # GPU): the world-size-1 overhead is measured against lightning2 like for like
        if not mech.sequence_parallel:
            return super()._measure(mech, fn, case)
        if case.world_size == 1:
            return super()._measure(mech, _bound(mech, self.ranks, 1), case)
        return lead_measure(mech, case, self.ranks, self.spec.max_case_seconds)


class ShardedExecutor(LocalExecutor):
    """``run_sweep``'s cases run by the ranks of a sharded run (every rank calls run_sweep
    with the same arguments and its own executor). Rank 0 checks and makes the directory;
    sequence-parallel cases run on rank 0's lead with the others serving; the other cases
    are dealt to the ranks by whole lines; each rank writes its own journal; rank 0 merges
    them at the end."""

    one_process = False

    def __init__(self, ranks: Ranks):
        self.ranks = ranks
        self.journal = records.rank_journal(ranks.rank)
        self.leads = ranks.rank == 0
        self.torn_note = f"{self.journal}: a last line cut off by a crash was moved aside"
        self._places: list = []

    def admit(self, spec: SweepSpec, meta: dict | None, out: Path | None) -> None:
        world = self.ranks.world
        if meta is not None and meta.get("world_size", 1) != world:
            raise UsageError(f"{out} was run on {meta.get('world_size', 1)} rank(s); resume it "
                             f"with --nproc-per-node {meta.get('world_size', 1)}, not {world}")
        if spec.device != self.ranks.device:
            raise UsageError(f"this is a {spec.device} sweep and the ranks run on "
                             f"{self.ranks.device}")

    def cases(self, spec: SweepSpec) -> list[Case]:
        # the same UsageError on every rank
        cases = with_world(expand(spec), self.ranks.world, spec.world_sizes)
        make_groups({c.world_size for c in cases if c.world_size > 1 or
                     registry.get(c.mechanism).sequence_parallel}, self.ranks)
        return cases

    def run_dir(self, out: Path | None, spec: SweepSpec, resume: bool) -> Path:
        """Rank 0 names and makes the directory; the others follow its word."""
        ranks, outcome = self.ranks, None
        if ranks.rank == 0:
            try:
                out = Path(out) if out is not None else default_run_dir(spec)
                prepare_dir(out, resume)
                if not resume:
                    self._places = _gather((ranks.device_index, os.uname().nodename), ranks)
                outcome = ("ok", str(out))
            except UsageError as exc:
                outcome = ("error", str(exc))
        elif not resume:
            _gather((ranks.device_index, os.uname().nodename), ranks)
        outcome = _send(outcome, ranks)
        if outcome[0] == "error":
            raise UsageError(outcome[1])
        return Path(outcome[1])

    def meta(self) -> dict:
        return dict(command=f"torchrun --nproc-per-node {self.ranks.world} -m attnbench "
                            f"{' '.join(sys.argv[1:])}",
                    world_size=self.ranks.world,
                    ranks=[dict(rank=r, device_index=i, host=h)
                           for r, (i, h) in enumerate(self._places)])

    def after_repair(self, out: Path, mine: list[Record]) -> list[Record]:
        dist.barrier(group=self.ranks.control)  # every journal repaired before anyone reads
        others = [records.read_journal(out, records.rank_journal(r)).records
                  for r in range(self.ranks.world) if r != self.ranks.rank]
        return list(records.read_journal(out).records) + mine + [r for o in others for r in o]

    def _parallel(self, cases: list[Case]) -> list[Case]:
        return [c for c in cases if registry.get(c.mechanism).sequence_parallel]

    def _alone(self, cases: list[Case]) -> list[Case]:
        return deal([c for c in cases if not registry.get(c.mechanism).sequence_parallel],
                    self.ranks.world)[self.ranks.rank]

    def share(self, cases: list[Case]) -> list[Case]:
        return self._alone(cases) + (self._parallel(cases) if self.ranks.rank == 0 else [])

    def sweep(self, spec: SweepSpec, emit, **callbacks) -> Sweep:
        return ShardedSweep(spec, emit, self.ranks, **callbacks)

    def run(self, sweep: Sweep, cases: list[Case], done: list[Record]) -> None:
        if self.ranks.rank == 0:
            try:
                sweep.run(self._parallel(cases), done)
            finally:
                end_service(self.ranks)
        else:
            serve(self.ranks, sweep.spec.max_case_seconds)
        sweep.run(self._alone(cases), done)
        dist.barrier(group=self.ranks.control)  # every rank's journal complete

    def stamp(self, rec: Record) -> Record:
        return stamp(rec, self.ranks.rank, self.ranks.device_index)

    def total_counts(self, counts: dict[str, int]) -> dict[str, int]:
        """Every rank's records of this run, by status (each rank calls this at the end)."""
        total: dict[str, int] = {}
        for part in _gather(counts, self.ranks):
            for status, n in part.items():
                total[status] = total.get(status, 0) + n
        return total

    def finish(self, out: Path, mine: list[Record]):
        if self.ranks.rank == 0:
            merge(out, self.ranks.world)
            return records.finalize(out)
        return None
