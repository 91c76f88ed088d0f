"""A sweep's run directory, from first record to tables: ``run_sweep(spec, out)``.

``run_sweep`` is the library entry point (the CLI, the notebooks and the tests call it): it
owns a run directory's lifecycle (meta, lock, journal, resume, interrupt, a lost CUDA
context, the tidy tables at the end) and returns a ``SweepResult``. What happens to each case
is ``attnbench.sweep.Sweep``'s; where the cases run is the executor's: this process
(``LocalExecutor``, the default) or the ranks of a torchrun (``sharded.ShardedExecutor``,
which the CLI hands in).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from attnbench import envinfo, interrupts, measure, peaks, records, registry, testing
from attnbench.case import Case
from attnbench.errors import UsageError
from attnbench.records import Record
from attnbench.spec import SweepSpec, spec_of_run
from attnbench.sweep import (  # noqa: F401 (importable from here, as before)
    CALLS_PER_CASE,
    CudaContextLost,
    LocalExecutor,
    Sweep,
    SweepState,
    default_run_dir,
    measure_case,
    predicted_ms,
)

KILLED = ("process killed while measuring this case (out of host memory, or killed by the "
          "system); not tried again")
# ranks would have to agree on when to stop: the CLI refuses it before torchrun starts them
ONE_PROCESS_LIMIT = "--time-limit is for a run in one process, not a sharded one"


@dataclass
class SweepResult:
    run_dir: Path
    counts: dict[str, int]  # status -> records written by this call
    seconds: float
    repaired: list[str] = field(default_factory=list)  # what opening the journal mended
    # The tables written at the end (None where this process wrote none: a rank but 0)
    table: pd.DataFrame | None = field(default=None, repr=False)
    # cases left unstarted by the time limit, with their predicted seconds: a resume runs them
    not_started: list[tuple[Case, float]] = field(default_factory=list)

    @property
    def frame(self) -> pd.DataFrame:
        """Every record of the run (earlier ones of a resumed run included), tidy."""
        return records.load(self.run_dir)


def resolve(spec: SweepSpec | None, out: Path | str | None,
            resume: bool) -> tuple[SweepSpec, dict | None]:
    """The sweep to run and, resuming, the run directory's meta. UsageError for a resume
    without a directory, a new run without a spec, or a spec the directory does not hold."""
    if not resume:
        if spec is None:
            raise UsageError("a new run needs a sweep spec")
        return spec, None
    if out is None:
        raise UsageError("resume needs the run directory to continue")
    meta = records.read_meta(Path(out))
    stored = spec_of_run(meta, out)
    if spec is not None and spec != stored:
        raise UsageError(f"{out} holds another sweep; resume it without sweep options")
    return stored, meta


def stored_spec(run_dir: Path, device: str) -> SweepSpec:
    """The sweep a run directory holds, to resume it on ``device`` (UsageError if it ran on
    another kind of device)."""
    stored = spec_of_run(records.read_meta(run_dir), run_dir)
    if stored.device != device:
        raise UsageError(f"{run_dir} was run on {stored.device}; this machine runs on {device}")
    return stored


def plan(resume: Path | None, given: bool, out: Path | None, name: str | None, device: str,
         build: Callable[[], SweepSpec], suffix: str = "",
         training: bool = False) -> tuple[SweepSpec | None, Path, SweepSpec]:
    """A new run or the resume of one, as a command line asks: (the spec for ``run_sweep``,
    None when resuming; the run directory; the spec to show).

    ``given``: a sweep option was given (refused with ``resume``); ``build()`` makes a new
    spec; the default directory is results/<name>, else results/<time>-<preset>-<device>
    followed by ``suffix``. ``training``: for ``attnbench tgs``, which resumes only
    training-step sweeps."""
    if resume is not None:
        if given or out or name:
            raise UsageError("--resume takes the sweep from DIR/meta.json; give no other sweep "
                             "options")
        stored = stored_spec(resume, device)
        if training and not stored.models:
            raise UsageError(f"{resume} is an operator sweep; continue it with attnbench run "
                             f"--resume {resume}")
        return None, resume, stored
    if name is not None:
        check_run_name(name)
    spec = build()
    if out is None:
        out = Path("results") / name if name else Path(f"{default_run_dir(spec)}{suffix}")
    return spec, out, spec


def check_run_name(name: str) -> None:
    """UsageError unless ``name`` is one plain directory name (under results/)."""
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
        raise UsageError(f"--name {name!r}: a run name is one plain directory name under "
                         "results/ (no '/', not '..'); to write elsewhere use --out DIR")


def run_sweep(
    spec: SweepSpec | None,
    out: Path | str | None = None,
    *,
    resume: bool = False,
    on_record: Callable[[Record], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    on_start: Callable[[Path, list[Case], int], None] | None = None,
    executor: LocalExecutor | None = None,
    time_limit: float | None = None,
) -> SweepResult:
    """Run a sweep into a run directory and return what it did.

    ``out``: the run directory (default ``results/<time>-<preset>-<device>``). ``resume``:
    continue the run in ``out``, whose meta.json gives the sweep (``spec`` must then be None
    or the same); its recorded cases are skipped, and a case a killed process left unfinished
    is recorded as an error. Callbacks: ``on_start(run_dir, cases, todo)`` once,
    ``on_status(text)`` before each step, ``on_record(record)`` after each record is on disk.
    ``executor``: where the cases run (default this process; in each rank of a torchrun
    ``attnbench.sharded.ShardedExecutor(attnbench.sharded.init(device))``, every rank calling
    with the same arguments). ``time_limit``: seconds from this call after which no case
    starts that is predicted (from its line's last length, or the other lines' at its
    length) to end past them; such cases get no record and are listed in the result's
    ``not_started`` for a resume (one process only).

    Bad input raises UsageError before any measurement. Ctrl-C (KeyboardInterrupt) and a lost
    CUDA context (CudaContextLost) propagate after the tables of what was recorded are
    written; ``resume`` continues such a run in a new process.

    SIGTERM and SIGHUP (``timeout``, a CI cancel, ``kill``, torchrun) are Ctrl-C here: they
    raise ``interrupts.Interrupted``, a KeyboardInterrupt (attnbench.interrupts).
    """
    with interrupts.signals_interrupt(), measure.quiet_heap():
        return _run_sweep(spec, out, resume=resume, on_record=on_record, on_status=on_status,
                          on_start=on_start, executor=executor, time_limit=time_limit)


def _run_sweep(spec, out, *, resume, on_record, on_status, on_start, executor, time_limit
               ) -> SweepResult:
    deadline = None if time_limit is None else measure.clock() + time_limit
    plant = testing.check_plant()  # a bad ATTNBENCH_PLANT_SLOWDOWN: UsageError before any work
    ex = executor if executor is not None else LocalExecutor()
    if time_limit is not None and not ex.one_process:
        raise UsageError(ONE_PROCESS_LIMIT)
    if time_limit is not None and not time_limit > 0:  # NaN too
        raise UsageError(f"--time-limit {time_limit:g}: give a number of seconds above 0")
    started_at = time.time()
    spec, meta = resolve(spec, out, resume)
    ex.admit(spec, meta, out)
    cases = ex.cases(spec)  # bad input fails here, before any directory is made
    out = ex.run_dir(out, spec, resume)

    counts: dict[str, int] = {}
    with records.RunWriter(out, ex.journal) as writer:
        if not resume and ex.leads:
            extra = ex.meta()  # the command, and where the ranks ran
            records.write_meta(out, dict(
                command=extra.pop("command"), started=datetime.now().isoformat(),
                spec=spec.to_json(), **extra, environment=envinfo.environment(),
                peaks=peaks.device_peaks(spec.device), **plant))
        journal = records.read_journal(out, ex.journal)
        repaired = [f"{ex.journal} {problem} (left out)" for problem in journal.problems]
        if writer.repaired:
            repaired.append(ex.torn_note)
        mine = list(journal.records)
        current: list[Case] = []  # the case being measured, if any

        def emit(rec: Record) -> None:
            current.clear()
            rec = ex.stamp(rec)  # where it ran
            writer.write(rec)
            mine.append(rec)
            counts[rec.status] = counts.get(rec.status, 0) + 1
            if on_record is not None:
                on_record(rec)

        # A case the last process died in: recorded as an error, so it is not tried again;
        # unless the torn line just moved aside was its record (it died writing it, after
        # measuring): then it is measured again.
        for case in journal.unfinished:
            if writer.repaired and case == journal.last_started:
                continue
            emit(Record(case, registry.get(case.mechanism).family, spec.device, "error",
                        timestamp=time.time(), reason=KILLED))
        done = ex.after_repair(out, list(mine))
        todo = len({c.key() for c in ex.share(cases)} - {r.case.key() for r in done})
        if on_start is not None:
            on_start(out, cases, todo)

        def started(case: Case) -> None:
            current[:] = [case]
            writer.started(case, time.time())

        sweep = ex.sweep(spec, emit, on_case=on_status or (lambda text: None), started=started,
                         deadline=deadline)
        try:
            ex.run(sweep, cases, done)
        except KeyboardInterrupt:
            for case in current:
                writer.abandoned(case, time.time())
            raise
        finally:
            table = _finish_tables(ex, out, mine)
    return SweepResult(out, ex.total_counts(counts), time.time() - started_at, repaired,
                       not_started=sweep.not_started, table=table)


def _finish_tables(ex: LocalExecutor, out: Path, mine: list[Record]):
    """The executor's tables at the end of a run (its ``finish``); while an error is on its
    way out (a full disk writing the journal) a failure here does not hide that error, which
    said it first."""
    if sys.exc_info()[1] is None:
        return ex.finish(out, mine)
    try:
        return ex.finish(out, mine)
    except UsageError:
        return None
