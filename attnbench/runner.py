"""The sweep: every case becomes exactly one record, whatever happens to it.

``run_sweep(spec, out)`` is the library entry point (the CLI, the notebooks and the tests
call it): it owns a run directory's lifecycle (meta, lock, resume, interrupt, a lost CUDA
context, the tidy tables at the end) and returns a ``SweepResult``.

For each case, ``Sweep.run_case`` asks in order: is the mechanism available and can it take
the case (else ``unsupported``)? Did a shorter length of the same line run out of memory, or
does the case need more memory than the device has free (then ``oom`` without trying)?
Would it exceed the case budget, predicted from the last length by the FLOP model, or has
its line spent its budget (``skipped``)? Otherwise it checks the mechanism against its
float64 oracle once per configuration, marks the case started in the journal, times it,
measures its memory, and the record is appended at once. Errors and OOMs are records; the
sweep goes on.
"""

from __future__ import annotations

import gc
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch

from attnbench import check as checking
from attnbench import envinfo, interrupts, measure, peaks, records, registry, testing
from attnbench.case import Case
from attnbench.errors import UsageError
from attnbench.prepare import call_flops, memory_floor, prepare_call, unsupported_reason
from attnbench.records import Record
from attnbench.spec import SweepSpec, expand

MIB = measure.MIB
# Measuring a case costs about this many calls (first call, estimate, warm-up, MIN_REPS
# repetitions, memory): the budget check multiplies the predicted time of one call by it.
CALLS_PER_CASE = measure.MIN_REPS + 6


class CudaContextLost(RuntimeError):
    """The CUDA context is unusable (e.g. an illegal memory access): nothing more can run."""


@dataclass
class _MechState:
    mech: registry.Mechanism
    availability: registry.Availability
    fn: Callable | None = None
    load_error: str = ""
    checks: dict = field(default_factory=dict)  # check case -> CheckResult | str


@dataclass
class SweepState:
    """What earlier cases tell later ones: OOM frontiers, the last good time and the time
    spent per line."""

    oom_at: dict = field(default_factory=dict)  # series -> shortest length that ran out
    slow_at: dict = field(default_factory=dict)  # series -> shortest length that timed out
    last_ok: dict = field(default_factory=dict)  # series -> (case, time_ms) of its longest ok
    # series -> seconds spent measuring. The first call of a line's first measured case
    # (compilation, autotuning) is left out; a mechanism that compiles again for every length
    # (the official lightning-attn) pays its recompiles from the budget.
    spent_s: dict = field(default_factory=dict)

    def learn(self, record: Record, seconds: float = 0.0) -> None:
        case = record.case
        series = case.series()
        self.spent_s[series] = self.spent_s.get(series, 0.0) + seconds
        if record.status == "oom" and not record.reason.startswith("not tried"):
            self.oom_at[series] = min(self.oom_at.get(series, case.seq_len), case.seq_len)
        elif record.status == "timeout":
            self.slow_at[series] = min(self.slow_at.get(series, case.seq_len), case.seq_len)
        elif record.status == "ok":
            prev = self.last_ok.get(series)
            if prev is None or case.seq_len >= prev[0].seq_len:
                self.last_ok[series] = (case, record.time_ms)


def predicted_ms(mech: registry.Mechanism, case: Case, state: SweepState) -> float | None:
    """One call's time, scaled from the longest measured length of the line by FLOPs."""
    prev = state.last_ok.get(case.series())
    if prev is None or prev[0].seq_len >= case.seq_len:
        return None
    done, t0 = prev
    return t0 * call_flops(mech, case) / call_flops(mech, done)


def measure_case(mech: registry.Mechanism, fn: Callable, case: Case, device: str,
                 max_case_seconds: float) -> dict:
    """Time and memory of one case; returns Record fields. Exceptions propagate."""
    prepared = prepare_call(mech, case, device, fn)
    call = prepared.call
    compile_s = measure.first_call_seconds(call, device)
    estimate_ms = measure.first_call_seconds(call, device) * 1e3
    values = dict(compile_s=compile_s)
    if estimate_ms * CALLS_PER_CASE > max_case_seconds * 1e3:
        return dict(values, status="timeout",
                    reason=f"one call took {estimate_ms / 1e3:.2f} s; measuring would exceed "
                           f"--max-case-seconds {max_case_seconds:g}")
    if device == "cuda":
        timing = measure.time_cuda(call, prepared.inputs, estimate_ms, prepared.min_reps)
    else:
        timing = measure.time_cpu(call, min_run_time=min(0.2, max_case_seconds / 4),
                                  min_reps=prepared.min_reps)
    if device == "cuda" and timing.median_ms <= measure.HOST_PROBE_MAX_MS:
        values["host_ms"] = measure.host_ms_per_call(call)
    prepared.reset_grads()  # so the memory baseline holds no gradients of an earlier call
    peak, extra = measure.peak_memory_mib(call, device)
    seconds = timing.median_ms / 1e3
    return dict(
        values, status="ok", time_ms=timing.median_ms, time_ms_p20=timing.p20_ms,
        time_ms_p80=timing.p80_ms, reps=timing.reps, tokens_per_s=case.tokens / seconds,
        tflops=prepared.flops / seconds / 1e12, gbps=prepared.bytes / seconds / 1e9,
        peak_mem_mib=peak, extra_mem_mib=extra,
    )


def _free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        try:
            torch.cuda.empty_cache()
        except Exception:  # a lost context: the case's record says so, then the sweep stops
            pass


def _assert_cuda_alive() -> None:
    try:
        torch.cuda.synchronize()
    except Exception as exc:  # a sticky error (illegal address): every later call fails too
        raise CudaContextLost(str(exc).splitlines()[0]) from exc


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class Sweep:
    """Runs cases, calling ``emit(record)`` for each as soon as it exists.

    ``started(case)`` is called just before a case is measured (the journal's marker);
    ``on_case(text)`` is told what is about to run (a progress display).
    """

    def __init__(self, spec: SweepSpec, emit: Callable[[Record], None],
                 on_case: Callable[[str], None] = lambda text: None,
                 started: Callable[[Case], None] = lambda case: None):
        self.spec = spec
        self.emit = emit
        self.on_case = on_case
        self.started = started
        self.state = SweepState()
        self._planted = testing.planted_fractions()  # the test hook, marked in each record
        self._mechs: dict[str, _MechState] = {}
        self._measuring_s = 0.0  # of the case in hand: its line's budget counts this

    def _mech_state(self, name: str) -> _MechState:
        if name not in self._mechs:
            mech = registry.get(name)
            st = _MechState(mech, mech.available(self.spec.device))
            if st.availability:
                try:
                    st.fn = mech.callable()
                except Exception as exc:  # an import that fails is a reason, not a crash
                    st.load_error = f"could not load: {one_line(exc)}"
            self._mechs[name] = st
        return self._mechs[name]

    def _check(self, st: _MechState, case: Case):
        key = checking.check_case(case)
        if key not in st.checks:
            note = f" ({st.mech.warmup_note})" if st.mech.warmup_note else ""
            self.on_case(f"checking {st.mech.name} {case.dtype} d={case.head_dim} "
                         f"e={case.value_dim} vs float64{note}")
            try:
                st.checks[key] = checking.check(st.mech, case, self.spec.device)
            except Exception as exc:
                st.checks[key] = one_line(exc)
            _free_memory(self.spec.device)
        return st.checks[key]

    def run_case(self, case: Case) -> Record:
        spec, device = self.spec, self.spec.device
        st = self._mech_state(case.mechanism)
        mech = st.mech

        def record(status: str, **values) -> Record:
            return Record(case, mech.family, device, status, timestamp=time.time(),
                          planted=self._planted.get(case.mechanism, 0.0), **values)

        if not st.availability:
            return record("unsupported", reason=st.availability.reason)
        if st.load_error:
            return record("error", reason=st.load_error)
        reason = unsupported_reason(mech, case)
        if reason:
            return record("unsupported", reason=reason)
        series = case.series()
        oom_n = self.state.oom_at.get(series)
        if oom_n is not None and case.seq_len > oom_n:
            return record("oom", reason=f"not tried: out of memory at seq_len {oom_n}")
        need, free = memory_floor(mech, case), measure.available_bytes(device)
        if free is not None and need > free:
            return record("oom", reason=f"not tried: needs at least {need / 2**30:.1f} GiB, "
                                        f"{free / 2**30:.1f} GiB free on {device}")
        slow_n = self.state.slow_at.get(series)
        if slow_n is not None and case.seq_len > slow_n:
            return record("skipped", reason=f"not tried: at seq_len {slow_n} one call already "
                                            f"took too long for --max-case-seconds "
                                            f"{spec.max_case_seconds:g}")
        guess = predicted_ms(mech, case, self.state)
        if guess is not None and guess * CALLS_PER_CASE > spec.max_case_seconds * 1e3:
            return record("skipped", reason=f"predicted {guess / 1e3:.2f} s per call; measuring "
                                            f"would exceed --max-case-seconds "
                                            f"{spec.max_case_seconds:g}")
        spent = self.state.spent_s.get(series, 0.0)
        if spec.line_seconds and spent >= spec.line_seconds:
            return record("skipped", reason=f"its line spent {spent:.1f} s, the --line-seconds "
                                            f"budget is {spec.line_seconds:g}")

        result = self._check(st, case)
        if isinstance(result, str):
            status = "unsupported" if result.startswith("NotImplementedError") else "error"
            return record(status, reason=f"correctness check raised {result}")
        checked = dict(max_rel_err=result.max_rel_err, check_tol=result.tol,
                       check="pass" if result.passed else "fail")

        self.on_case(f"{mech.name} {case.mode} n={case.seq_len}")
        self.started(case)
        start = time.perf_counter()
        try:
            values = self._measure(mech, st.fn, case)
        except NotImplementedError as exc:
            return record("unsupported", reason=one_line(exc), **checked)
        except Exception as exc:
            return record("oom" if measure.is_oom(exc) else "error", reason=one_line(exc),
                          **checked)
        finally:
            self._measuring_s = time.perf_counter() - start
            _free_memory(device)
        if mech.impl_of is not None:
            values["impl"] = mech.impl_of(case)
        if checked["check"] != "pass":
            values["reason"] = (f"FAILED correctness check: rel err {result.max_rel_err:.2e} > "
                                f"tol {result.tol:.2e}")
        return record(values.pop("status"), **checked, **values)

    def _measure(self, mech: registry.Mechanism, fn: Callable, case: Case) -> dict:
        """Record fields of a measured case (a sharded sweep measures some together)."""
        return measure_case(mech, fn, case, self.spec.device, self.spec.max_case_seconds)

    def run(self, cases: list[Case], done: list[Record] = ()) -> None:
        """Run ``cases``, skipping those ``done`` already holds (resume) and learning from them."""
        for rec in done:
            self.state.learn(rec)
        skip = {rec.case.key() for rec in done}
        for case in cases:
            if case.key() in skip:
                continue
            self._measuring_s = 0.0
            rec = self.run_case(case)
            self.emit(rec)
            first = self.state.spent_s.get(rec.case.series(), 0.0) == 0.0  # in this process
            compile_s = 0.0 if math.isnan(rec.compile_s) or not first else rec.compile_s
            self.state.learn(rec, max(0.0, self._measuring_s - compile_s))
            if rec.status == "error" and self.spec.device == "cuda":
                _assert_cuda_alive()


# --- the library entry point ---------------------------------------------------------------


@dataclass
class SweepResult:
    run_dir: Path
    counts: dict[str, int]  # status -> records written by this call
    seconds: float
    repaired: list[str] = field(default_factory=list)  # what opening the journal mended

    @property
    def frame(self) -> pd.DataFrame:
        """Every record of the run (earlier ones of a resumed run included), tidy."""
        return records.load(self.run_dir)


def default_run_dir(spec: SweepSpec) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{stamp}-{spec.preset or 'custom'}-{spec.device}"


def _prepare_dir(out: Path, resume: bool) -> None:
    """Refuse a directory a new run must not write into, with a way forward."""
    if resume:
        records.read_meta(out)
        return
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file, not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if records.is_run_dir(out):
            raise UsageError(f"{out} already holds a run; continue it with --resume {out}, "
                             "or choose another --out")
        raise UsageError(f"{out} is not empty and is not an attnbench run; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out}: {exc.strerror}") from None


def run_sweep(
    spec: SweepSpec | None,
    out: Path | str | None = None,
    *,
    resume: bool = False,
    on_record: Callable[[Record], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    on_start: Callable[[Path, list[Case], int], None] | None = None,
) -> SweepResult:
    """Run a sweep into a run directory and return what it did.

    ``out``: the run directory (default ``results/<time>-<preset>-<device>``). ``resume``:
    continue the run in ``out``, whose meta.json gives the sweep (``spec`` must then be None
    or the same); its recorded cases are skipped, and a case a killed process left unfinished
    is recorded as an error. Callbacks: ``on_start(run_dir, cases, todo)`` once,
    ``on_status(text)`` before each step, ``on_record(record)`` after each record is on disk.

    Bad input raises UsageError before any measurement. Ctrl-C (KeyboardInterrupt) and a lost
    CUDA context (CudaContextLost) propagate after the tables of what was recorded are
    written; ``resume`` continues such a run in a new process.

    In a process of a sharded run (``attnbench.sharded.init`` joined torchrun's ranks) the
    ranks share the sweep, each with its own journal, merged at the end (attnbench.sharded).

    SIGTERM and SIGHUP (``timeout``, a CI cancel, ``kill``, torchrun) are Ctrl-C here: they
    raise ``interrupts.Interrupted``, a KeyboardInterrupt (attnbench.interrupts).
    """
    with interrupts.signals_interrupt():
        return _run_sweep(spec, out, resume=resume, on_record=on_record, on_status=on_status,
                          on_start=on_start)


def _run_sweep(spec, out, *, resume, on_record, on_status, on_start) -> SweepResult:
    from attnbench import sharded

    plant = testing.check_plant()  # a bad ATTNBENCH_PLANT_SLOWDOWN: UsageError before any work

    if sharded.current() is not None:
        return sharded.run_sharded(spec, out, resume=resume, on_record=on_record,
                                   on_status=on_status, on_start=on_start)
    started_at = time.time()
    if resume:
        if out is None:
            raise UsageError("resume needs the run directory to continue")
        out = Path(out)
        _prepare_dir(out, resume=True)
        stored = SweepSpec.from_json(records.read_meta(out)["spec"])
        if spec is not None and spec != stored:
            raise UsageError(f"{out} holds another sweep; resume it without sweep options")
        spec = stored
    elif spec is None:
        raise UsageError("a new run needs a sweep spec")
    out = Path(out) if out is not None else default_run_dir(spec)
    device = spec.device
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{out} is a CUDA sweep and torch sees no CUDA GPU here")
    cases = expand(spec)  # unknown mechanisms fail here, before any directory is made
    sharded.refuse_without_group(cases)
    if not resume:
        _prepare_dir(out, resume=False)

    counts: dict[str, int] = {}
    with records.RunWriter(out) as writer:
        if not resume:
            records.write_meta(out, dict(
                command=shlex.join(["attnbench", *sys.argv[1:]]),
                started=datetime.now().isoformat(), spec=spec.to_json(),
                environment=envinfo.environment(), peaks=peaks.device_peaks(device), **plant))
        journal = records.read_journal(out)
        repaired = [f"{records.JSONL_FILE} {problem} (left out)" for problem in journal.problems]
        if writer.repaired:
            repaired.append(f"a last line cut off by a crash was moved to {records.TORN_FILE}")
        done = list(journal.records)

        current: list[Case] = []  # the case being measured, if any

        def emit(rec: Record) -> None:
            current.clear()
            rec = sharded.stamp(rec, None)  # where it ran: this process's GPU, if any
            writer.write(rec)
            counts[rec.status] = counts.get(rec.status, 0) + 1
            if on_record is not None:
                on_record(rec)

        # A case the last process died in: recorded as an error, so it is not tried again;
        # unless the torn line just moved aside was its record (it died writing it, after
        # measuring): then it is measured again.
        for case in journal.unfinished:
            if writer.repaired and case == journal.last_started:
                continue
            mech = registry.get(case.mechanism)
            rec = Record(case, mech.family, device, "error", timestamp=time.time(),
                         reason="process killed while measuring this case (out of host "
                                "memory, or killed by the system); not tried again")
            emit(rec)
            done.append(rec)

        todo = len({c.key() for c in cases} - {r.case.key() for r in done})
        if on_start is not None:
            on_start(out, cases, todo)
        def started(case: Case) -> None:
            current[:] = [case]
            writer.started(case, time.time())

        sweep = Sweep(spec, emit, on_case=on_status or (lambda text: None), started=started)
        try:
            sweep.run(cases, done)
        except KeyboardInterrupt:
            for case in current:
                writer.abandoned(case, time.time())
            raise
        finally:
            records.finalize(out)
    return SweepResult(out, counts, time.time() - started_at, repaired)
