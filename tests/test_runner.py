import math
import sys

import pytest
import torch
from fakes import compiles_per_length, error_at, fake, make_case, oom_from, scaled, sleepy

from attnbench import measure, records, runner
from attnbench.errors import UsageError
from attnbench.records import Record
from attnbench.runner import Sweep, predicted_ms
from attnbench.spec import build_spec, expand


def sweep(mechanisms, seq_lens="128,256,512", modes="fwd", done=(), **kwargs):
    args = dict(batch="1", heads="2", head_dims="16")
    args.update(kwargs)
    spec = build_spec("cpu", "cpu", mechanisms=mechanisms, seq_lens=seq_lens, modes=modes, **args)
    out: list[Record] = []
    Sweep(spec, out.append).run(expand(spec), list(done))
    return out


def by_len(recs):
    return {r.case.seq_len: r for r in recs}


def test_ok_records_have_every_number():
    recs = sweep("linear-masked", modes="fwd,bwd,fwdbwd", seq_lens="128")
    assert [r.case.mode for r in recs] == ["fwd", "bwd", "fwdbwd"]
    for r in recs:
        assert r.status == "ok", r.reason
        assert r.time_ms_p20 <= r.time_ms <= r.time_ms_p80 and r.reps >= 1
        assert r.tokens_per_s == pytest.approx(128 / (r.time_ms / 1e3))
        assert r.tflops > 0 and r.compile_s > 0
        assert r.check == "pass" and r.max_rel_err < r.check_tol
        assert r.case.decay is True and r.family == "linear" and r.device == "cpu"


def test_oom_is_recorded_and_longer_lengths_not_tried(install):
    install(fake("fake-oom", oom_from(256)))
    recs = by_len(sweep("fake-oom"))
    assert recs[128].status == "ok"
    assert recs[256].status == "oom" and "out of memory" in recs[256].reason
    assert recs[512].status == "oom" and recs[512].reason.startswith("not tried")


def test_exception_is_recorded_and_the_sweep_goes_on(install):
    install(fake("fake-error", error_at(256)))
    recs = sweep("fake-error,linear-masked")
    statuses = [(r.case.mechanism, r.case.seq_len, r.status) for r in recs]
    assert ("fake-error", 256, "error") in statuses
    assert ("fake-error", 512, "ok") in statuses
    assert all(s == "ok" for m, _, s in statuses if m == "linear-masked")
    err = next(r for r in recs if r.status == "error")
    assert err.reason == "RuntimeError: boom: simulated kernel failure"


def test_wrong_answers_are_flagged_not_ranked(install):
    install(fake("fake-wrong", scaled(1.01)))
    recs = sweep("fake-wrong", seq_lens="128")
    assert recs[0].check == "fail" and "FAILED correctness check" in recs[0].reason
    assert recs[0].max_rel_err > recs[0].check_tol


def test_unsupported_cases_say_why(install):
    install(fake("fake-nobwd", scaled(1.0), backward=False),
            fake("fake-gpu", scaled(1.0), devices=("cuda",)))
    recs = sweep("fake-nobwd,fake-gpu", seq_lens="128", modes="fwd,bwd")
    reasons = {(r.case.mechanism, r.case.mode): (r.status, r.reason) for r in recs}
    assert reasons[("fake-nobwd", "fwd")][0] == "ok"
    assert reasons[("fake-nobwd", "bwd")] == ("unsupported", "fake-nobwd has no backward pass")
    status, reason = reasons[("fake-gpu", "fwd")]
    assert status == "unsupported" and "runs on cuda only" in reason
    # A head dim outside a mechanism's limits is only that mechanism's problem.
    install(fake("fake-small-d", scaled(1.0), head_dims=(32, 64)))
    rec = sweep("fake-small-d", seq_lens="128")[0]
    assert rec.status == "unsupported" and "head dims 32..64, not 16" in rec.reason


def test_not_implemented_is_unsupported(install):
    def refuses(q, k, v, decay=None):
        raise NotImplementedError("backend refuses head dim 16")
    install(fake("fake-refuses", refuses))
    rec = sweep("fake-refuses", seq_lens="128")[0]
    assert rec.status == "unsupported" and "refuses head dim 16" in rec.reason


def test_budget_skips_predicted_and_times_out_measured(install, fake_clock):
    # One call sleeps 0.05 s at n=128, 0.2 s at 256, 0.8 s at 512; a case costs ~15 calls
    # of 0.2 s, 7 of 0.8 s (measure.planned_calls).
    install(fake("fake-slow", sleepy(0.05)))
    recs = by_len(sweep("fake-slow", seq_lens="128,256,512", max_case_seconds=5.0))
    assert recs[128].status == "ok" and recs[256].status == "ok"
    assert recs[512].status == "skipped" and "predicted" in recs[512].reason
    assert math.isnan(recs[512].time_ms)  # a prediction is no measurement
    recs = by_len(sweep("fake-slow", seq_lens="512,1024", max_case_seconds=5.0))
    assert recs[512].status == "timeout" and "one call took " in recs[512].reason
    assert math.isnan(recs[512].time_ms)
    assert recs[1024].status == "skipped" and recs[1024].reason.startswith("not tried")


def test_a_line_that_spent_its_budget_skips_its_longer_lengths(install, fake_clock):
    install(fake("fake-slow", sleepy(0.02)))
    recs = by_len(sweep("fake-slow", seq_lens="128,256", line_seconds=0.2,
                        max_case_seconds=100.0))
    assert recs[128].status == "ok"
    assert recs[256].status == "skipped" and "--line-seconds budget is 0.2" in recs[256].reason


def test_first_calls_are_not_charged_to_the_line(install, fake_clock):
    """A kernel that compiles again at a longer length (a second code path) keeps its line:
    the budget counts measuring, never first calls (README: "first calls ... not counted")."""
    install(fake("fake-compiles", compiles_per_length(1.0)))
    recs = by_len(sweep("fake-compiles", seq_lens="128,256,512", line_seconds=0.5,
                        max_case_seconds=100.0))
    assert all(recs[n].status == "ok" for n in (128, 256, 512)), recs
    assert recs[256].compile_s >= 1.0


def test_prediction_scales_by_flops():
    spec = build_spec("cpu", "cpu", mechanisms="linear-masked", seq_lens="128,256")
    sweep = Sweep(spec, lambda r: None)
    first, second = expand(spec)[:2]
    from attnbench import registry
    rec = Record(first, "linear", "cpu", "ok", time_ms=2.0)
    sweep.state.learn(rec)
    assert predicted_ms(registry.get("linear-masked"), second, sweep.state) == pytest.approx(8.0)


def test_resume_skips_recorded_cases_and_keeps_the_oom_frontier(install):
    install(fake("fake-oom", oom_from(256)))
    first = sweep("fake-oom,linear-masked", seq_lens="128,256")
    done = first[:2]  # fake-oom 128 ok, 256 oom
    rest = sweep("fake-oom,linear-masked", seq_lens="128,256,512", done=done)
    keys = [(r.case.mechanism, r.case.seq_len) for r in rest]
    assert ("fake-oom", 128) not in keys and ("fake-oom", 256) not in keys
    assert [r for r in rest if r.case.mechanism == "fake-oom"][0].reason.startswith("not tried")
    assert len(rest) == 1 + 3


def test_inputs_are_random_not_zeros():
    from attnbench.check import random_inputs
    case = make_case(batch=1, heads=2, seq_len=8, head_dim=4, value_dim=6)
    q, k, v = random_inputs(case, "bnhd", "cpu", False, seed=1)
    assert q.shape == (1, 8, 2, 4) and v.shape == (1, 8, 2, 6)
    assert q.std() > 0.5 and not torch.equal(q, k)


def test_a_case_that_cannot_fit_is_recorded_oom_untried(install, monkeypatch):
    calls = []
    install(fake("fake-big", lambda *a: calls.append(1)))
    monkeypatch.setattr(measure, "available_bytes", lambda device: 2.0**30)
    rec = sweep("fake-big", seq_lens="128", batch="100000")[0]
    assert rec.status == "oom" and not calls
    assert "not tried: needs at least 6.1 GiB, 1.0 GiB free on cpu" in rec.reason


# --- run_sweep: the library entry point ----------------------------------------------------


def small_spec(**kw):
    args = dict(mechanisms="linear-masked", seq_lens="64,128", batch="1", heads="2",
                head_dims="8", modes="fwd")
    args.update(kw)
    return build_spec("cpu", "cpu", **args)


def test_a_time_limit_leaves_the_cases_predicted_to_end_past_it_to_a_resume(install, fake_clock,
                                                                           tmp_path):
    # fake-slow: 0.01 s a call at 128, 0.04 at 256, 0.16 at 512, where a case takes ~15 calls
    # (2.4 s); the two shorter cases take about a second; fake-quick a hundredth of that.
    install(fake("fake-slow", sleepy(0.01)), fake("fake-quick", sleepy(0.0001)))
    spec = small_spec(mechanisms="fake-slow,fake-quick", seq_lens="128,256,512",
                      head_dims="16")
    result = runner.run_sweep(spec, tmp_path / "run", time_limit=2.0)
    (case, need), = result.not_started
    assert (case.mechanism, case.seq_len) == ("fake-slow", 512) and need > 2.0
    df = result.frame
    done = {(m, n): s for m, n, s in zip(df["mechanism"], df["seq_len"], df["status"])}
    assert done == {("fake-slow", 128): "ok", ("fake-slow", 256): "ok",
                    ("fake-quick", 128): "ok", ("fake-quick", 256): "ok",
                    ("fake-quick", 512): "ok"}  # no record of the case left
    again = runner.run_sweep(None, tmp_path / "run", resume=True)
    assert again.counts == {"ok": 1} and not again.not_started
    assert len(again.frame) == 6


def test_a_time_limit_predicts_a_lines_first_case_from_the_other_lines(install, fake_clock,
                                                                       tmp_path):
    # each case at 512 takes ~2.4 s (fake-slow above): the first runs, having nothing to be
    # predicted from; the second line's, predicted from it, would end past the limit
    install(fake("fake-slow", sleepy(0.01)), fake("fake-slow-too", sleepy(0.01)))
    spec = small_spec(mechanisms="fake-slow,fake-slow-too", seq_lens="512", head_dims="16")
    result = runner.run_sweep(spec, tmp_path / "run", time_limit=3.0)
    (case, need), = result.not_started
    assert case.mechanism == "fake-slow-too" and 2.0 < need < 3.0
    assert list(result.frame["mechanism"]) == ["fake-slow"]
    # a resume learns the prediction from the records: a limit it cannot meet starts nothing
    again = runner.run_sweep(None, tmp_path / "run", resume=True, time_limit=1.0)
    assert [c.mechanism for c, _ in again.not_started] == ["fake-slow-too"]
    assert len(again.frame) == 1


def test_a_time_limit_is_refused_where_it_cannot_hold(tmp_path):
    class Sharded(runner.LocalExecutor):
        one_process = False  # ranks would have to agree on when to stop

    for limit, executor, message in ((0.0, None, "above 0"), (-1.0, None, "above 0"),
                                     (60.0, Sharded(), "one process")):
        with pytest.raises(UsageError, match=message):
            runner.run_sweep(small_spec(), tmp_path / "run", executor=executor,
                             time_limit=limit)
        assert not (tmp_path / "run").exists()


def test_run_sweep_writes_a_run_and_calls_back(tmp_path, monkeypatch):
    import attnbench

    # A one-process run never enters the sharding code: importing it would fail here.
    monkeypatch.setitem(sys.modules, "attnbench.sharded", None)
    monkeypatch.delattr(attnbench, "sharded", raising=False)
    seen, starts = [], []
    result = runner.run_sweep(small_spec(), tmp_path / "run", on_record=seen.append,
                              on_start=lambda d, cases, todo: starts.append(todo))
    assert starts == [2] and [r.status for r in seen] == ["ok", "ok"]
    assert result.counts == {"ok": 2} and result.run_dir == tmp_path / "run"
    for name in ("meta.json", "records.jsonl", "records.parquet", "records.csv", "run.lock"):
        assert (tmp_path / "run" / name).is_file()
    assert result.frame["seq_len"].tolist() == [64, 128]
    assert result.table["seq_len"].tolist() == [64, 128]  # the tables written at the end
    meta = records.read_meta(tmp_path / "run")
    assert meta["schema_version"] == records.SCHEMA_VERSION
    assert meta["spec"]["seq_lens"] == [64, 128]


def test_resume_runs_what_is_missing_and_records_a_killed_case(tmp_path):
    out = tmp_path / "run"
    runner.run_sweep(small_spec(seq_lens="64"), out)
    # The sweep grows (as if the first run had been stopped), and a process died in a case.
    meta = records.read_meta(out)
    meta["spec"]["seq_lens"] = [64, 128, 256]
    records.write_meta(out, {k: v for k, v in meta.items() if k != "schema_version"})
    killed = make_case(seq_len=256, batch=1, heads=2, head_dim=8)
    with records.RunWriter(out) as w:
        w.started(killed, 0.0)
    result = runner.run_sweep(None, out, resume=True)
    df = result.frame
    assert sorted(df["seq_len"]) == [64, 128, 256] and len(df) == 3
    row = df[df["seq_len"] == 256].iloc[0]
    assert row["status"] == "error" and "process killed" in row["reason"]
    assert result.counts == {"ok": 1, "error": 1}
    again = runner.run_sweep(None, out, resume=True)
    assert again.counts == {} and len(again.frame) == 3


@pytest.mark.parametrize("prepare, message", [
    (lambda d: (d.mkdir(), (d / "x").write_text("")), "not empty and is not an attnbench run"),
    (lambda d: d.write_text(""), "is a file"),
    (lambda d: runner.run_sweep(small_spec(seq_lens="64"), d), "already holds a run"),
])
def test_run_sweep_refuses_a_directory_it_must_not_write(tmp_path, prepare, message):
    out = tmp_path / "run"
    prepare(out)
    with pytest.raises(UsageError, match=message):
        runner.run_sweep(small_spec(), out)


def test_resume_refuses_another_sweep(tmp_path):
    runner.run_sweep(small_spec(seq_lens="64"), tmp_path / "run")
    with pytest.raises(UsageError, match="holds another sweep"):
        runner.run_sweep(small_spec(seq_lens="128"), tmp_path / "run", resume=True)


def test_interrupt_keeps_what_was_recorded(tmp_path, install):
    pressed = []

    def interrupted(q, k, v, decay=None):  # Ctrl-C once, in the first 128 case
        if q.shape[2] == 128 and not pressed:
            pressed.append(1)
            raise KeyboardInterrupt
        return scaled(1.0)(q, k, v, decay)
    install(fake("fake-ctrl-c", interrupted))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        runner.run_sweep(small_spec(mechanisms="fake-ctrl-c", seq_lens="64,128,256"), out)
    df = records.load(out)
    assert df["seq_len"].tolist() == [64] and (out / "records.parquet").is_file()
    assert records.read_journal(out).unfinished == []  # interrupted, not killed: runs again
    again = runner.run_sweep(None, out, resume=True)
    assert again.counts == {"ok": 2} and len(again.frame) == 3
