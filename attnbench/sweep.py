"""One process's sweep: every case becomes exactly one record, whatever happens to it.

For each case, ``Sweep.run_case`` asks in order: is the mechanism available and can it take
the case (else ``unsupported``)? Did a shorter length of the same line run out of memory, or
does the case need more memory than the device has free (then ``oom`` without trying)?
Would it exceed the case budget, predicted from the last length by the FLOP model, or has
its line spent its budget (``skipped``)? Otherwise it checks the mechanism against its
float64 oracle once per configuration, marks the case started in the journal, times it,
measures its memory, and the record is appended at once. Errors and OOMs are records; the
sweep goes on.

Where the cases run is an executor: ``LocalExecutor`` (this process, one case after
another) or ``attnbench.sharded.ShardedExecutor`` (the ranks of a torchrun). The run
directory's lifecycle around it is ``attnbench.runner.run_sweep``'s.
"""

from __future__ import annotations

import dataclasses
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

from attnbench import measure, modes, records, registry, testing
from attnbench.case import Case
from attnbench.errors import UsageError, one_line
from attnbench.prepare import call_flops, memory_floor, prepare_call, unsupported_reason
from attnbench.records import Record
from attnbench.spec import SweepSpec, expand

MIB = measure.MIB
# Measuring a case of short calls costs about this many (measure.planned_calls): the budget
# check multiplies the predicted time of one call by it.
CALLS_PER_CASE = measure.planned_calls(0.0)


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
    # series -> seconds spent measuring. First calls (compilation, autotuning) are left out,
    # at every length: a kernel that compiles a second path at some length (lightning2's
    # sequence split) must not lose its longer lengths to it. A mechanism that recompiles
    # for every length (the official lightning-attn) is bounded by --max-case-seconds alone.
    spent_s: dict = field(default_factory=dict)
    # peers(case) -> the slowest ok call of the lines that share the case's shape and length:
    # what a line's first case, which has no time of its own line, is predicted from
    peer_ms: dict = field(default_factory=dict)

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
            key = peers(case)
            self.peer_ms[key] = max(self.peer_ms.get(key, 0.0), record.time_ms)


def peers(case: Case) -> tuple:
    """The key shared by the cases of every line at ``case``'s shape and length: the same
    call (or training step) with another mechanism, model family or decay."""
    return dataclasses.replace(case, mechanism="", model="", decay=False).key()


def predicted_ms(mech: registry.Mechanism, case: Case, state: SweepState) -> float | None:
    """One call's time, scaled from the longest measured length of the line by FLOPs."""
    prev = state.last_ok.get(case.series())
    if prev is None or prev[0].seq_len >= case.seq_len:
        return None
    done, t0 = prev
    return t0 * call_flops(mech, case) / call_flops(mech, done)


def measuring_seconds(call_ms: float, case: Case) -> float:
    """Seconds measuring ``case`` takes when one call takes ``call_ms``: its planned calls."""
    return call_ms * measure.planned_calls(call_ms, modes.of(case).min_reps) / 1e3


def too_slow(call_s: float, max_case_seconds: float, calls: int = CALLS_PER_CASE) -> str:
    """Why a case whose one call took ``call_s`` is not measured ("" if it is): measuring
    it (``calls`` calls) would exceed the case budget."""
    if call_s * calls > max_case_seconds:
        return (f"one call took {call_s:.2f} s; measuring would exceed --max-case-seconds "
                f"{max_case_seconds:g}")
    return ""


def measure_case(mech: registry.Mechanism, fn: Callable, case: Case, device: str,
                 max_case_seconds: float) -> dict:
    """Time and memory of one case; returns Record fields. Exceptions propagate."""
    prepared = prepare_call(mech, case, device, fn)
    call = prepared.call
    compile_s = measure.first_call_seconds(call, device)
    prepared.reset_grads()  # so the memory baseline holds no gradients of the first call
    peak, extra, estimate_s = measure.memory_and_seconds(call, device)
    estimate_ms = estimate_s * 1e3
    values = dict(compile_s=compile_s, peak_mem_mib=peak, extra_mem_mib=extra)
    late = too_slow(estimate_s, max_case_seconds,
                    measure.planned_calls(estimate_ms, prepared.min_reps))
    if late:
        return dict(values, status="timeout", reason=late)
    if device == "cuda":
        timing = measure.time_cuda(call, prepared.inputs, estimate_ms, prepared.min_reps)
    else:
        timing = measure.time_cpu(call, min_run_time=min(0.2, max_case_seconds / 4),
                                  min_reps=prepared.min_reps)
    if device == "cuda" and timing.median_ms <= measure.HOST_PROBE_MAX_MS:
        values["host_ms"] = measure.host_ms_per_call(call)
    seconds = timing.median_ms / 1e3
    return dict(
        values, status="ok", time_ms=timing.median_ms, time_ms_p20=timing.p20_ms,
        time_ms_p80=timing.p80_ms, reps=timing.reps,
        **prepared.rates(seconds),  # tokens/s, TFLOP/s, GB/s and the cache, as the mode counts
    )


def _assert_cuda_alive() -> None:
    try:
        torch.cuda.synchronize()
    except Exception as exc:  # a sticky error (illegal address): every later call fails too
        raise CudaContextLost(str(exc).splitlines()[0]) from exc


class Sweep:
    """Runs cases, calling ``emit(record)`` for each as soon as it exists.

    ``started(case)`` is called just before a case is measured (the journal's marker);
    ``on_case(text)`` is told what is about to run (a progress display).
    """

    def __init__(self, spec: SweepSpec, emit: Callable[[Record], None],
                 on_case: Callable[[str], None] = lambda text: None,
                 started: Callable[[Case], None] = lambda case: None,
                 deadline: float | None = None):
        self.spec = spec
        self.emit = emit
        self.on_case = on_case
        self.started = started
        # measure.clock() time past which no case starts that is predicted to end after it
        self.deadline = deadline
        self.not_started: list[tuple[Case, float]] = []  # (case, predicted s) left for later
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
        mode = modes.of(case)
        key = mode.check_case(case)
        if key not in st.checks:
            note = f" ({st.mech.warmup_note})" if st.mech.warmup_note else ""
            self.on_case(f"checking {st.mech.name} {case.dtype} d={case.head_dim} "
                         f"e={case.value_dim} vs float64{note}")
            try:
                st.checks[key] = mode.check(st.mech, key, self.spec.device)
            except Exception as exc:
                st.checks[key] = one_line(exc)
            measure.free_memory(self.spec.device)
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
        guess, case_s = self._predicted(mech, case)
        if case_s > spec.max_case_seconds:
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
        start = measure.clock()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()  # an OOM's need counts from here
        try:
            values = self._measure(mech, st.fn, case)
        except NotImplementedError as exc:
            return record("unsupported", reason=one_line(exc), **checked)
        except Exception as exc:
            if not measure.is_oom(exc):
                return record("error", reason=one_line(exc), **checked)
            need = measure.oom_needed_mib(exc, device)
            said = "" if math.isnan(need) else f"needed more than {need / 1024:.1f} GiB: "
            return record("oom", reason=said + one_line(exc), peak_mem_mib=need, **checked)
        finally:
            self._measuring_s = measure.clock() - start
            measure.free_memory(device)
        impl = modes.of(case).impl(mech, case)
        if impl:
            values["impl"] = impl
        if checked["check"] != "pass":
            values["reason"] = (f"FAILED correctness check: rel err {result.max_rel_err:.2e} > "
                                f"tol {result.tol:.2e}")
        return record(values.pop("status"), **checked, **values)

    def _predicted(self, mech: registry.Mechanism, case: Case) -> tuple[float, float]:
        """(one call's ms, measuring the case's s: its planned calls), scaled from its line's
        last length (``predicted_ms``); (NaN, 0) where the line has none yet."""
        guess = predicted_ms(mech, case, self.state)
        if guess is None:
            return math.nan, 0.0
        return guess, measuring_seconds(guess, case)

    def _past_deadline(self, case: Case) -> float | None:
        """The seconds ``case`` is predicted to take if it would end past the deadline (no
        case starts once the deadline has passed), else None. A line's first length is
        predicted from the slowest other line at its shape and length (on a resume too:
        from their records); a case with no prediction at all, or one the budget skips at
        once, runs."""
        if self.deadline is None:
            return None
        left = self.deadline - measure.clock()
        if left <= 0:
            return 0.0
        guess, need = self._predicted(self._mech_state(case.mechanism).mech, case)
        peer_ms = self.state.peer_ms.get(peers(case))
        if math.isnan(guess) and peer_ms is not None:
            need = measuring_seconds(peer_ms, case)
        return need if left < need <= self.spec.max_case_seconds else None

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
            need = self._past_deadline(case)
            if need is not None:
                self.not_started.append((case, need))  # no record: a resume measures it
                continue
            self._measuring_s = 0.0
            rec = self.run_case(case)
            self.emit(rec)
            compile_s = 0.0 if math.isnan(rec.compile_s) else rec.compile_s
            self.state.learn(rec, max(0.0, self._measuring_s - compile_s))
            if rec.status == "error" and self.spec.device == "cuda":
                _assert_cuda_alive()


def stamp(rec: Record, rank: int = 0, device_index: int | None = None) -> Record:
    """Where a record ran: rank, device index (default: this process's current GPU; -1 on
    the CPU), tokens per rank, bytes one rank sent per call."""
    mech = registry.get(rec.case.mechanism)
    comm = mech.comm(rec.case) if mech.comm is not None and rec.status == "ok" else math.nan
    if device_index is None:
        device_index = -1
        if rec.device == "cuda":
            try:
                device_index = torch.cuda.current_device()
            except Exception:  # a lost context: the record still gets written
                pass
    return dataclasses.replace(rec, rank=rank, device_index=device_index,
                               seq_len_per_rank=rec.case.seq_len_per_rank, comm_bytes=comm)


def default_run_dir(spec: SweepSpec) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{stamp}-{spec.preset or 'custom'}-{spec.device}"


def prepare_dir(out: Path, resume: bool) -> None:
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


class LocalExecutor:
    """Where a sweep's cases run: in this process, one after another, into records.jsonl.

    ``run_sweep`` calls its methods in this order: ``admit`` (may the sweep run here),
    ``cases``, ``run_dir`` (the directory made ready), ``meta`` (what meta.json adds),
    ``after_repair`` (the journals mended, the earlier records), ``share`` (what this process
    runs), ``sweep`` and ``run``, ``stamp`` for each record, ``finish``, ``total_counts``.
    """

    journal = records.JSONL_FILE
    leads = True  # this process writes meta.json and the tables
    one_process = True  # may stop on a time limit alone (ranks would have to agree)
    torn_note = f"a last line cut off by a crash was moved to {records.TORN_FILE}"

    def admit(self, spec: SweepSpec, meta: dict | None, out: Path | None) -> None:
        if spec.device == "cuda" and not torch.cuda.is_available():
            where = out if out is not None else default_run_dir(spec)
            raise UsageError(f"{where} is a CUDA sweep and torch sees no CUDA GPU here")

    def cases(self, spec: SweepSpec) -> list[Case]:
        cases = expand(spec)  # unknown mechanisms fail here, before any directory is made
        named = sorted({c.mechanism for c in cases
                        if registry.get(c.mechanism).sequence_parallel})
        if named:  # a sequence-parallel mechanism needs ranks: a ShardedExecutor
            problem = registry.get(named[0]).available().reason
            problem = problem or ("runs in a sharded run: call attnbench.sharded.init(device) "
                                  "in each rank first")
            raise UsageError(f"{', '.join(named)} {problem}")
        return cases

    def run_dir(self, out: Path | None, spec: SweepSpec, resume: bool) -> Path:
        out = Path(out) if out is not None else default_run_dir(spec)
        prepare_dir(out, resume)
        return out

    def meta(self) -> dict:
        return dict(command=shlex.join(["attnbench", *sys.argv[1:]]))

    def after_repair(self, out: Path, mine: list[Record]) -> list[Record]:
        """Every record of the run so far, given this process's journal's."""
        return mine

    def share(self, cases: list[Case]) -> list[Case]:
        return cases

    def sweep(self, spec: SweepSpec, emit, **callbacks) -> Sweep:
        return Sweep(spec, emit, **callbacks)

    def run(self, sweep: Sweep, cases: list[Case], done: list[Record]) -> None:
        sweep.run(cases, done)

    def stamp(self, rec: Record) -> Record:
        return stamp(rec)

    def total_counts(self, counts: dict[str, int]) -> dict[str, int]:
        """The records of this run by status, every process's (here, this one's)."""
        return counts

    def finish(self, out: Path, mine: list[Record]) -> pd.DataFrame | None:
        """Write the tables of the run (``mine``: its records, read and written by this
        process); the frame, or None if nothing was recorded."""
        if not mine:
            return None
        df = records.latest_frame(mine)
        records.write_tables(df, out, records.PARQUET_FILE, records.CSV_FILE)
        return df
