import pytest
import torch
from fakes import error_at, fake, oom_from, scaled, sleepy

from attnbench.records import Record
from attnbench.runner import Sweep, predicted_ms
from attnbench.spec import build_spec, expand


def run_sweep(mechanisms, seq_lens="128,256,512", modes="fwd", done=(), **kwargs):
    spec = build_spec("cpu", "cpu", mechanisms=mechanisms, seq_lens=seq_lens, modes=modes,
                      batch="1", heads="2", head_dims="16", **kwargs)
    out: list[Record] = []
    Sweep(spec, out.append).run(expand(spec), list(done))
    return out


def by_len(records):
    return {r.seq_len: r for r in records}


def test_ok_records_have_every_number():
    recs = run_sweep("linear-masked", modes="fwd,bwd,fwdbwd", seq_lens="128")
    assert [r.mode for r in recs] == ["fwd", "bwd", "fwdbwd"]
    for r in recs:
        assert r.status == "ok", r.reason
        assert r.time_ms_p20 <= r.time_ms <= r.time_ms_p80 and r.reps >= 1
        assert r.tokens_per_s == pytest.approx(128 / (r.time_ms / 1e3))
        assert r.tflops > 0 and r.compile_s > 0
        assert r.check == "pass" and r.max_rel_err < r.check_tol
        assert r.decay is True and r.family == "linear" and r.device == "cpu"


def test_oom_is_recorded_and_longer_lengths_not_tried(install):
    install(fake("fake-oom", oom_from(256)))
    recs = by_len(run_sweep("fake-oom"))
    assert recs[128].status == "ok"
    assert recs[256].status == "oom" and "out of memory" in recs[256].reason
    assert recs[512].status == "oom" and recs[512].reason.startswith("not tried")


def test_exception_is_recorded_and_the_sweep_goes_on(install):
    install(fake("fake-error", error_at(256)))
    recs = run_sweep("fake-error,linear-masked")
    statuses = [(r.mechanism, r.seq_len, r.status) for r in recs]
    assert ("fake-error", 256, "error") in statuses
    assert ("fake-error", 512, "ok") in statuses
    assert all(s == "ok" for m, _, s in statuses if m == "linear-masked")
    err = next(r for r in recs if r.status == "error")
    assert err.reason == "RuntimeError: boom: simulated kernel failure"


def test_wrong_answers_are_flagged_not_ranked(install):
    install(fake("fake-wrong", scaled(1.01)))
    recs = run_sweep("fake-wrong", seq_lens="128")
    assert recs[0].check == "fail" and "FAILED correctness check" in recs[0].reason
    assert recs[0].max_rel_err > recs[0].check_tol


def test_unsupported_cases_say_why(install):
    install(fake("fake-nobwd", scaled(1.0), backward=False),
            fake("fake-gpu", scaled(1.0), devices=("cuda",)))
    recs = run_sweep("fake-nobwd,fake-gpu", seq_lens="128", modes="fwd,bwd")
    reasons = {(r.mechanism, r.mode): (r.status, r.reason) for r in recs}
    assert reasons[("fake-nobwd", "fwd")][0] == "ok"
    assert reasons[("fake-nobwd", "bwd")] == ("unsupported", "fake-nobwd has no backward pass")
    status, reason = reasons[("fake-gpu", "fwd")]
    assert status == "unsupported" and "runs on cuda only" in reason
    # A head dim outside a mechanism's limits is only that mechanism's problem.
    install(fake("fake-small-d", scaled(1.0), head_dims=(32, 64)))
    rec = run_sweep("fake-small-d", seq_lens="128")[0]
    assert rec.status == "unsupported" and "head dims 32..64, not 16" in rec.reason


def test_not_implemented_is_unsupported(install):
    def refuses(q, k, v, decay=None):
        raise NotImplementedError("backend refuses head dim 16")
    install(fake("fake-refuses", refuses))
    rec = run_sweep("fake-refuses", seq_lens="128")[0]
    assert rec.status == "unsupported" and "refuses head dim 16" in rec.reason


def test_budget_skips_predicted_and_times_out_measured(install):
    # One call sleeps 0.05 s at n=128, 0.2 s at 256, 0.8 s at 512; a case costs ~16 calls.
    install(fake("fake-slow", sleepy(0.05)))
    recs = by_len(run_sweep("fake-slow", seq_lens="128,256,512", max_case_seconds=5.0))
    assert recs[128].status == "ok" and recs[256].status == "ok"
    assert recs[512].status == "skipped" and "predicted" in recs[512].reason
    rec = run_sweep("fake-slow", seq_lens="512", max_case_seconds=5.0)[0]
    assert rec.status == "timeout" and rec.time_ms >= 800


def test_prediction_scales_by_flops():
    spec = build_spec("cpu", "cpu", mechanisms="linear-masked", seq_lens="128,256")
    sweep = Sweep(spec, lambda r: None)
    first, second = expand(spec)[:2]
    from attnbench import registry
    rec = Record.for_case(first, "linear", "cpu", "ok", time_ms=2.0)
    sweep.state.learn(rec)
    assert predicted_ms(registry.get("linear-masked"), second, sweep.state) == pytest.approx(8.0)


def test_resume_skips_recorded_cases_and_keeps_the_oom_frontier(install):
    install(fake("fake-oom", oom_from(256)))
    first = run_sweep("fake-oom,linear-masked", seq_lens="128,256")
    done = first[:2]  # fake-oom 128 ok, 256 oom
    rest = run_sweep("fake-oom,linear-masked", seq_lens="128,256,512", done=done)
    keys = [(r.mechanism, r.seq_len) for r in rest]
    assert ("fake-oom", 128) not in keys and ("fake-oom", 256) not in keys
    assert [r for r in rest if r.mechanism == "fake-oom"][0].reason.startswith("not tried")
    assert len(rest) == 1 + 3


def test_inputs_are_random_not_zeros():
    from attnbench.check import random_inputs
    q, k, v = random_inputs(1, 2, 8, 4, torch.float32, "cpu", "bnhd", False, seed=1)
    assert q.shape == (1, 8, 2, 4) and q.std() > 0.5 and not torch.equal(q, k)
