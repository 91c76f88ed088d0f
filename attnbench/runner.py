"""The sweep: every case becomes a record, whatever happens to it.

For each case: is the mechanism available and can it take the case (else ``unsupported``)?
Did a shorter length of the same line run out of memory (then ``oom`` without trying)?
Would it take longer than the case budget, predicted from the last length by the FLOP
model (``skipped``)? Otherwise check it against its float64 oracle once per configuration,
time it, measure its memory, and append the record at once. Errors and OOMs are records;
the sweep goes on.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from attnbench import check as checking
from attnbench import measure, registry
from attnbench.records import Record
from attnbench.spec import Case, SweepSpec, expand

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
    checks: dict = field(default_factory=dict)  # (d, dtype, decay) -> CheckResult | str


@dataclass
class SweepState:
    """What earlier cases tell later ones: OOM frontiers and the last good time per line."""

    oom_at: dict = field(default_factory=dict)  # series -> shortest length that ran out
    last_ok: dict = field(default_factory=dict)  # series -> (seq_len, time_ms)

    def learn(self, record: Record) -> None:
        series = record.case().series()
        if record.status == "oom":
            self.oom_at[series] = min(self.oom_at.get(series, record.seq_len), record.seq_len)
        elif record.status == "ok":
            prev = self.last_ok.get(series)
            if prev is None or record.seq_len >= prev[0]:
                self.last_ok[series] = (record.seq_len, record.time_ms)


def predicted_ms(mech: registry.Mechanism, case: Case, state: SweepState) -> float | None:
    """One call's time, scaled from the longest measured length of the line by FLOPs."""
    prev = state.last_ok.get(case.series())
    if prev is None or prev[0] >= case.seq_len:
        return None
    n0, t0 = prev
    b, h, d = case.batch, case.heads, case.head_dim
    return t0 * mech.flops(b, h, case.seq_len, d, d) / mech.flops(b, h, n0, d, d)


def measure_case(mech: registry.Mechanism, fn: Callable, case: Case, device: str,
                 max_case_seconds: float) -> dict:
    """Time and memory of one case; returns Record fields. Exceptions propagate."""
    dtype = registry.DTYPES[case.dtype]
    grad = case.mode != "fwd"
    b, h, n, d = case.batch, case.heads, case.seq_len, case.head_dim
    q, k, v = checking.random_inputs(b, h, n, d, dtype, device, mech.layout, grad, seed=n)
    decay = checking.decay_rates(mech, case.decay, h, device)
    inputs = [q, k, v]

    def reset_grads():
        for x in inputs:
            x.grad = None

    # Backward calls drop the old gradients first: do_bench resets them only around its
    # timed repetitions, and accumulating during its estimate and warm-up would add a sum
    # kernel and a second set of gradients (24 GiB at 256k in the paper shape).
    if case.mode == "fwd":
        def call():
            return fn(q, k, v, decay)
    elif case.mode == "bwd":
        out = fn(q, k, v, decay)  # the graph is kept; only the backward pass is timed
        d_out = torch.randn_like(out)

        def call():
            reset_grads()
            out.backward(d_out, retain_graph=True)
    else:
        with torch.no_grad():
            d_out = torch.randn_like(fn(q, k, v, decay))

        def call():
            reset_grads()
            fn(q, k, v, decay).backward(d_out)

    # Test hook, off unless ATTNBENCH_PLANT_SLOWDOWN="name:0.10" is set (read now, not at
    # import): adds ~10% busy work to every timed call of that mechanism, whatever the mode,
    # so CI can show `attnbench compare` catches a slowdown. See attnbench/compare.py.
    from attnbench.compare import planted_slowdown

    call = planted_slowdown(mech.name, call, device)

    compile_s = measure.first_call_seconds(call, device)
    estimate_ms = measure.first_call_seconds(call, device) * 1e3
    values = dict(compile_s=compile_s)
    if estimate_ms * CALLS_PER_CASE > max_case_seconds * 1e3:
        return dict(values, status="timeout", time_ms=estimate_ms, reps=1,
                    reason=f"one call took {estimate_ms / 1e3:.2f} s; measuring would exceed "
                           f"--max-case-seconds {max_case_seconds:g}")
    if device == "cuda":
        timing = measure.time_cuda(call, inputs, estimate_ms)
    else:
        timing = measure.time_cpu(call, min_run_time=min(0.2, max_case_seconds / 4))
    if device == "cuda" and timing.median_ms <= measure.HOST_PROBE_MAX_MS:
        values["host_ms"] = measure.host_ms_per_call(call)
    reset_grads()  # so the memory baseline holds no gradients of an earlier call
    peak, extra = measure.peak_memory_mib(call, device)
    seconds = timing.median_ms / 1e3
    flops = registry.mode_flops(mech.flops(b, h, n, d, d), case.mode)
    return dict(
        values, status="ok", time_ms=timing.median_ms, time_ms_p20=timing.p20_ms,
        time_ms_p80=timing.p80_ms, reps=timing.reps, tokens_per_s=b * n / seconds,
        tflops=flops / seconds / 1e12, peak_mem_mib=peak, extra_mem_mib=extra,
    )


def _free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        try:
            torch.cuda.empty_cache()
        except Exception:  # a lost context: the case's record says so, then run() stops
            pass


def _assert_cuda_alive() -> None:
    try:
        torch.cuda.synchronize()
    except Exception as exc:  # a sticky error (illegal address): every later call fails too
        raise CudaContextLost(str(exc).splitlines()[0]) from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class Sweep:
    """Runs the cases of a spec, calling ``emit(record)`` for each as soon as it exists."""

    def __init__(self, spec: SweepSpec, emit: Callable[[Record], None],
                 on_case: Callable[[str], None] = lambda text: None):
        self.spec = spec
        self.emit = emit
        self.on_case = on_case  # told what is about to run (progress display)
        self.state = SweepState()
        self._mechs: dict[str, _MechState] = {}

    def cases(self) -> list[Case]:
        return expand(self.spec)

    def _mech_state(self, name: str) -> _MechState:
        if name not in self._mechs:
            mech = registry.get(name)
            st = _MechState(mech, mech.available(self.spec.device))
            if st.availability:
                try:
                    st.fn = mech.callable()
                except Exception as exc:  # an import that fails is a reason, not a crash
                    st.load_error = f"could not load: {_one_line(exc)}"
            self._mechs[name] = st
        return self._mechs[name]

    def _check(self, st: _MechState, case: Case):
        key = (case.head_dim, case.dtype, case.decay)
        if key not in st.checks:
            note = f" ({st.mech.warmup_note})" if st.mech.warmup_note else ""
            self.on_case(f"checking {st.mech.name} {case.dtype} d={case.head_dim} vs float64{note}")
            try:
                st.checks[key] = checking.check(
                    st.mech, case.head_dim, case.dtype, case.decay, self.spec.device)
            except Exception as exc:
                st.checks[key] = _one_line(exc)
            _free_memory(self.spec.device)
        return st.checks[key]

    def run_case(self, case: Case) -> Record:
        device = self.spec.device
        st = self._mech_state(case.mechanism)
        mech = st.mech

        def record(status: str, **values) -> Record:
            return Record.for_case(case, mech.family, device, status, timestamp=time.time(),
                                   **values)

        if not st.availability:
            return record("unsupported", reason=st.availability.reason)
        if st.load_error:
            return record("error", reason=st.load_error)
        reason = mech.unsupported_reason(case.seq_len, case.head_dim, case.dtype, case.decay)
        if reason:
            return record("unsupported", reason=reason)
        if case.mode != "fwd" and not mech.backward:
            return record("unsupported", reason=f"{mech.name} has no backward pass")
        oom_n = self.state.oom_at.get(case.series())
        if oom_n is not None and case.seq_len > oom_n:
            return record("oom", reason=f"not tried: out of memory at seq_len {oom_n}")
        guess = predicted_ms(mech, case, self.state)
        if guess is not None and guess * CALLS_PER_CASE > self.spec.max_case_seconds * 1e3:
            return record("skipped", time_ms=guess,
                          reason=f"predicted {guess / 1e3:.2f} s per call; measuring would "
                                 f"exceed --max-case-seconds {self.spec.max_case_seconds:g}")

        result = self._check(st, case)
        if isinstance(result, str):
            status = "unsupported" if result.startswith("NotImplementedError") else "error"
            return record(status, reason=f"correctness check raised {result}")
        checked = dict(max_rel_err=result.max_rel_err, check_tol=result.tol,
                       check="pass" if result.passed else "fail")

        self.on_case(f"{mech.name} {case.mode} n={case.seq_len}")
        try:
            values = measure_case(mech, st.fn, case, device, self.spec.max_case_seconds)
        except NotImplementedError as exc:
            return record("unsupported", reason=_one_line(exc), **checked)
        except Exception as exc:
            return record("oom" if measure.is_oom(exc) else "error", reason=_one_line(exc),
                          **checked)
        finally:
            _free_memory(device)
        if mech.impl_of is not None:
            values["impl"] = mech.impl_of(case.batch, case.heads, case.seq_len, case.head_dim,
                                          case.dtype)
        if checked["check"] != "pass":
            values["reason"] = (f"FAILED correctness check: rel err {result.max_rel_err:.2e} > "
                                f"tol {result.tol:.2e}")
        return record(values.pop("status"), **checked, **values)

    def run(self, cases: list[Case], done: list[Record] = ()) -> None:
        """Run ``cases``, skipping those ``done`` already holds (resume) and learning from them."""
        for rec in done:
            self.state.learn(rec)
        skip = {rec.case().key() for rec in done}
        for case in cases:
            if case.key() in skip:
                continue
            rec = self.run_case(case)
            self.emit(rec)
            self.state.learn(rec)
            if rec.status == "error" and self.spec.device == "cuda":
                _assert_cuda_alive()
