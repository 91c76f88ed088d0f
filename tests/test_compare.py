"""attnbench compare: the regression rule on constructed records, and its exit codes."""

import dataclasses
import json
import math
import sys

import pytest
from fakes import make_case, make_run

from attnbench import cli, compare
from attnbench.errors import UsageError
from attnbench.records import Record

NAN = math.nan


def rec(mech="linear-masked", mode="fwd", n=1024, t=1.0, spread=0.01, status="ok", mem=NAN,
        check="pass", device="cuda", b=1, h=4, d=32, host=NAN) -> Record:
    """A record of median time ``t`` ms with p20/p80 at t*(1 -/+ spread); ``host``: host_ms.

    On CUDA by default: the time rule gates GPU times (CPU times have their own tests)."""
    case = make_case(mech, mode, b, h, n, d)
    if status != "ok":
        return Record(case, "linear", device, status, reason=f"it was {status}")
    return Record(
        case, "linear", device, "ok", time_ms=t, time_ms_p20=t * (1 - spread),
        time_ms_p80=t * (1 + spread), reps=20, tokens_per_s=b * n / (t / 1e3), tflops=1.0,
        extra_mem_mib=mem, peak_mem_mib=mem, check=check, host_ms=host,
        reason="" if check == "pass" else "FAILED correctness check")


def runs(tmp_path, base, new, **kw):
    return make_run(tmp_path / "base", base, **kw), make_run(tmp_path / "new", new, **kw)


def one(tmp_path, base, new, **options):
    b, n = runs(tmp_path, [base], [new])
    result = compare.compare_dirs(b, n, **options)
    assert len(result.cases) == 1
    return result.cases[0], result


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["attnbench", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


# --- the rule ------------------------------------------------------------------------------


def test_identical_runs_are_clean(tmp_path):
    recs = [rec(n=n, mode=m) for n in (256, 512) for m in ("fwd", "bwd")]
    b, n = runs(tmp_path, recs, recs)
    result = compare.compare_dirs(b, n)
    assert not result.failed
    assert {c.verdict for c in result.cases} == {"same"}
    assert all(c.tokens_ratio == pytest.approx(1.0) for c in result.cases)


def test_ten_percent_slower_with_tight_spread_regresses(tmp_path):
    c, result = one(tmp_path, rec(t=1.0), rec(t=1.10))
    assert c.verdict == "regressed" and c.failed and result.failed
    assert c.tokens_ratio == pytest.approx(1 / 1.10)
    assert c.time_ratio == pytest.approx(1.10)
    assert "+10.0%" in c.why


def test_regression_caught_with_a_spread_larger_than_half_the_threshold(tmp_path):
    # +-3% spread: the intervals [0.97, 1.03] and [1.067, 1.133] do not overlap. An interval
    # inflated by the threshold (1.03 * 1.05 = 1.0815 > 1.067) would have missed this.
    c, _ = one(tmp_path, rec(t=1.0, spread=0.03), rec(t=1.10, spread=0.03))
    assert c.verdict == "regressed"


def test_slower_but_inside_the_noise_band_is_reported_not_failed(tmp_path):
    c, result = one(tmp_path, rec(t=1.0, spread=0.2), rec(t=1.10, spread=0.2))
    assert c.verdict == "noise" and not c.failed and not result.failed
    assert "noise" in c.why


def test_within_threshold_is_same(tmp_path):
    c, _ = one(tmp_path, rec(t=1.0, spread=0.001), rec(t=1.04, spread=0.001))
    assert c.verdict == "same" and not c.failed


def test_threshold_option(tmp_path):
    c, _ = one(tmp_path, rec(t=1.0), rec(t=1.10), threshold=0.2)
    assert c.verdict == "same"


def test_improvement(tmp_path):
    c, _ = one(tmp_path, rec(t=1.0), rec(t=0.8))
    assert c.verdict == "improved" and not c.failed
    assert c.tokens_ratio == pytest.approx(1.25)


def test_faster_inside_noise_is_noise(tmp_path):
    c, _ = one(tmp_path, rec(t=1.0, spread=0.2), rec(t=0.9, spread=0.2))
    assert c.verdict == "noise" and not c.failed


def test_no_spread_means_the_median_decides(tmp_path):
    base, new = rec(t=1.0), rec(t=1.10)
    base = dataclasses.replace(base, time_ms_p20=NAN, time_ms_p80=NAN)
    c, _ = one(tmp_path, base, new)
    assert c.verdict == "regressed"


# --- memory, status, correctness, missing cases ---------------------------------------------


@pytest.mark.parametrize("base_mem, new_mem, verdict, failed", [
    (100.0, 110.0, "grew", True),
    (100.0, 103.0, "same", False),
    (0.2, 0.6, "same", False),  # +200%, but under MEM_FLOOR_MIB
    (100.0, 80.0, "shrank", False),
    (NAN, NAN, "", False),  # no figure (the CPU): not compared
    (100.0, NAN, "", False),
])
def test_memory(tmp_path, base_mem, new_mem, verdict, failed):
    c, _ = one(tmp_path, rec(mem=base_mem), rec(mem=new_mem))
    assert c.mem_verdict == verdict and c.failed is failed
    assert c.verdict == "same"  # time did not move


def test_memory_threshold_option(tmp_path):
    c, _ = one(tmp_path, rec(mem=100.0), rec(mem=110.0), mem_threshold=0.2)
    assert c.mem_verdict == "same" and not c.failed


@pytest.mark.parametrize("base_status, new_status, verdict, failed", [
    ("ok", "oom", "status", True),
    ("ok", "error", "status", True),
    ("ok", "unsupported", "status", True),
    ("ok", "timeout", "status", False),  # a budget decision, not a result
    ("ok", "skipped", "status", False),
    ("unsupported", "error", "status", True),
    ("oom", "ok", "status", False),
    ("unsupported", "ok", "status", False),
    ("oom", "oom", "not-run", False),
])
def test_status_changes(tmp_path, base_status, new_status, verdict, failed):
    c, _ = one(tmp_path, rec(status=base_status), rec(status=new_status))
    assert c.verdict == verdict and c.failed is failed
    if verdict == "status":
        assert f"{base_status} -> {new_status}" in c.why


def test_correctness_check_turning_to_fail_fails(tmp_path):
    c, _ = one(tmp_path, rec(), rec(check="fail"))
    assert c.verdict == "check" and c.failed


def test_missing_cases_fail_unless_allowed(tmp_path):
    b, n = runs(tmp_path, [rec(n=256), rec(n=512)], [rec(n=256), rec(n=1024)])
    result = compare.compare_dirs(b, n)
    verdicts = {c.case.seq_len: c.verdict for c in result.cases}
    assert verdicts == {256: "same", 512: "only-base", 1024: "only-new"}
    assert result.failed
    assert not compare.compare_dirs(b, n, allow_missing=True).failed


# --- unusable inputs -------------------------------------------------------------------------


def test_no_common_case_is_a_usage_error(tmp_path):
    b, n = runs(tmp_path, [rec(n=256)], [rec(n=512)])
    with pytest.raises(compare.UsageError, match="no case in common"):
        compare.compare_dirs(b, n)


def test_different_devices_is_a_usage_error(tmp_path):
    b = make_run(tmp_path / "b", [rec(device="cpu")])
    n = make_run(tmp_path / "n", [rec()])
    with pytest.raises(compare.UsageError, match="not comparable"):
        compare.compare_dirs(b, n)


def test_different_gpus_warn(tmp_path):
    b = make_run(tmp_path / "b", [rec()], gpu="NVIDIA H100")
    n = make_run(tmp_path / "n", [rec()], gpu="NVIDIA H200")
    result = compare.compare_dirs(b, n)
    assert any("H100" in w and "H200" in w for w in result.warnings)


@pytest.mark.parametrize("base_host, new_host, verdict", [
    (NAN, NAN, "regressed"),  # no probe (CPU, or calls over 2 ms): the rule as usual
    (0.5, 0.5, "regressed"),  # the host issues the call in half its GPU time: GPU-bound
    (0.9, NAN, "host-bound"),  # the base was host-bound
    (0.1, 1.3, "host-bound"),  # the new run's host could not keep up
])
def test_host_bound_changes_are_reported_not_failed(tmp_path, base_host, new_host, verdict):
    c, result = one(tmp_path, rec(t=1.0, host=base_host), rec(t=1.5, host=new_host))
    assert c.verdict == verdict and c.failed is (verdict == "regressed")
    if verdict == "host-bound":
        assert "the host sets this time" in c.why and not result.failed


def test_host_bound_does_not_hide_memory_growth(tmp_path):
    c, _ = one(tmp_path, rec(t=1.0, host=1.0, mem=100.0), rec(t=1.5, host=1.0, mem=200.0))
    assert c.verdict == "host-bound" and c.mem_verdict == "grew" and c.failed


def test_host_bound_improvement_is_not_claimed(tmp_path):
    c, _ = one(tmp_path, rec(t=1.0, host=1.0), rec(t=0.5, host=1.0))
    assert c.verdict == "host-bound" and not c.failed


def test_gate_limits_which_mechanisms_fail(tmp_path):
    base = [rec(mech="linear-masked"), rec(mech="lightning2")]
    new = [rec(mech="linear-masked", t=1.5), rec(mech="lightning2")]
    b, n = runs(tmp_path, base, new)
    gated = compare.compare_dirs(b, n, gate=compare.parse_gate("lightning2,softmax"))
    masked = next(c for c in gated.cases if c.case.mechanism == "linear-masked")
    assert masked.verdict == "regressed" and masked.not_gated and not masked.failed
    assert not gated.failed and gated.counts()["not-gated"] == 1
    assert compare.compare_dirs(b, n, gate=compare.parse_gate("linear")).failed
    assert compare.compare_dirs(b, n, gate=compare.parse_gate("all")).failed


def test_parse_gate():
    assert compare.parse_gate(None) == compare.parse_gate("all") == ()
    softmax = compare.parse_gate("softmax")
    assert "flash2" in softmax and "lightning2" not in softmax
    assert compare.parse_gate("lightning2, lightning2,lightning1") == ("lightning2", "lightning1")
    with pytest.raises(UsageError, match="unknown mechanism or family 'nope'"):
        compare.parse_gate("lightning2,nope")


# --- the command line --------------------------------------------------------------------


def test_cli_exit_codes(tmp_path, monkeypatch, capsys):
    same = runs(tmp_path / "same", [rec()], [rec()])
    code, out, _ = run_cli(monkeypatch, capsys, "compare", *same)
    assert code == 0 and "same" in out

    slow = runs(tmp_path / "slow", [rec()], [rec(t=1.2)])
    code, out, err = run_cli(monkeypatch, capsys, "compare", *slow)
    assert code == 1 and "regressed" in out and "FAIL" in err

    code, _, _ = run_cli(monkeypatch, capsys, "compare", *slow, "--threshold", "0.5")
    assert code == 0

    gate = runs(tmp_path / "gate", [rec()], [rec(t=1.2)])
    code, _, err = run_cli(monkeypatch, capsys, "compare", *gate, "--gate", "lightning2")
    assert code == 0 and "not gated" in err
    code, _, err = run_cli(monkeypatch, capsys, "compare", *gate, "--gate", "nope")
    assert code == 2 and err.count("\n") == 1

    missing = runs(tmp_path / "missing", [rec(n=1), rec(n=2)], [rec(n=1)])
    assert run_cli(monkeypatch, capsys, "compare", *missing)[0] == 1
    assert run_cli(monkeypatch, capsys, "compare", *missing, "--allow-missing")[0] == 0


@pytest.mark.parametrize("problem", ["missing-dir", "schema", "no-overlap", "empty"])
def test_cli_unusable_inputs_exit_2_with_one_line(tmp_path, monkeypatch, capsys, problem):
    base = make_run(tmp_path / "base", [rec(n=256)])
    if problem == "missing-dir":
        new = tmp_path / "nope"
    elif problem == "schema":
        new = make_run(tmp_path / "new", [rec(n=256)], schema=99)
    elif problem == "no-overlap":
        new = make_run(tmp_path / "new", [rec(n=512)])
    else:
        new = make_run(tmp_path / "new", [])
    code, out, err = run_cli(monkeypatch, capsys, "compare", base, new)
    assert code == 2 and out == ""
    assert err.startswith("attnbench: error: ") and err.count("\n") == 1


def test_cli_json(tmp_path, monkeypatch, capsys):
    b, n = runs(tmp_path, [rec(n=256), rec(n=512, mem=10.0), rec(n=1024)],
                [rec(n=256, t=1.5), rec(n=512, mem=10.0), rec(n=1024, status="oom")])
    code, out, _ = run_cli(monkeypatch, capsys, "compare", b, n, "--json")
    assert code == 1
    data = json.loads(out)
    assert data["failed"] is True and data["threshold"] == 0.05 and data["times_gated"] is True
    by_n = {c["case"]["seq_len"]: c for c in data["cases"]}
    assert by_n[256]["verdict"] == "regressed"
    assert by_n[256]["tokens_ratio"] == pytest.approx(1 / 1.5)
    assert by_n[512]["verdict"] == "same" and by_n[512]["base"]["extra_mem_mib"] == 10.0
    assert by_n[1024]["verdict"] == "status" and by_n[1024]["new"]["time_ms"] is None
    assert data["counts"] == {"regressed": 1, "same": 1, "status": 1}


# --- CPU times: reported, not gated (issue 12 item 7) --------------------------------------


def cpu(**kw) -> Record:
    return rec(device="cpu", **kw)


@pytest.mark.parametrize("new_t", [2.51, 0.2, 1.10])
def test_cpu_times_that_moved_are_reported_not_failed(tmp_path, new_t):
    # +151% with tight spreads: what two identical back-to-back CPU runs showed in the issue
    c, result = one(tmp_path, cpu(t=1.0), cpu(t=new_t))
    assert c.verdict == "cpu-drift" and not c.failed and not result.failed
    assert "not gated" in c.why and c.time_ratio == pytest.approx(new_t)
    assert not result.times_gated and len(result.warnings) == 1
    here = f" Here new/base time: {new_t:.2f}x to {new_t:.2f}x."
    assert result.warnings[0] == compare.CPU_WARNING + here


def test_cpu_times_within_the_threshold_are_same(tmp_path):
    c, _ = one(tmp_path, cpu(t=1.0), cpu(t=1.04))
    assert c.verdict == "same"


@pytest.mark.parametrize("base, new, verdict", [
    (dict(), dict(status="error"), "status"),
    (dict(), dict(status="oom"), "status"),
    (dict(), dict(check="fail"), "check"),
])
def test_cpu_runs_still_fail_on_status_and_correctness(tmp_path, base, new, verdict):
    c, result = one(tmp_path, cpu(**base), cpu(t=3.0, **new))
    assert c.verdict == verdict and c.failed and result.failed


def test_cpu_runs_still_fail_on_missing_cases(tmp_path):
    b, n = runs(tmp_path, [cpu(n=256), cpu(n=512)], [cpu(n=256, t=5.0)])
    result = compare.compare_dirs(b, n)
    assert result.failed and [c.verdict for c in result.cases] == ["cpu-drift", "only-base"]


def test_cpu_times_option_applies_the_time_rule(tmp_path):
    c, result = one(tmp_path, cpu(t=1.0), cpu(t=1.3), cpu_times=True)
    assert c.verdict == "regressed" and c.failed and result.times_gated
    assert result.warnings == []


def test_cli_on_cpu_runs_says_times_are_not_gated(tmp_path, monkeypatch, capsys):
    slow = runs(tmp_path, [cpu(), cpu(n=2048)], [cpu(t=2.51), cpu(n=2048, t=0.5)])
    code, out, err = run_cli(monkeypatch, capsys, "compare", *slow)
    assert code == 0 and "cpu-drift" in out and "times not gated on the CPU" in out
    assert "CPU times are not gated" in err and "--cpu-times" in err
    assert "FAIL" not in err
    code, out, err = run_cli(monkeypatch, capsys, "compare", *slow, "--cpu-times")
    assert code == 1 and "regressed" in out and "FAIL" in err
    code, out, _ = run_cli(monkeypatch, capsys, "compare", *slow, "--json")
    assert code == 0 and json.loads(out)["times_gated"] is False


def test_two_real_cpu_runs_one_after_the_other_pass(tmp_path, monkeypatch, capsys):
    """The issue's reproduction, small: two identical back-to-back CPU runs, then compare."""
    sweep = ["run", "--device", "cpu", "--mechanisms", "sdpa-math,linear-masked", "--seq-lens",
             "64,256", "--heads", "2", "--head-dim", "16", "--modes", "fwd", "--no-plot"]
    for side in ("base", "new"):
        assert run_cli(monkeypatch, capsys, *sweep, "--out", tmp_path / side)[0] == 0
    code, out, err = run_cli(monkeypatch, capsys, "compare", tmp_path / "base", tmp_path / "new")
    assert code == 0, out + err
    assert "CPU times are not gated" in err


def test_brackets_in_directory_names_survive_the_table(tmp_path, monkeypatch, capsys):
    b = make_run(tmp_path / "base[bold]x", [rec()])
    n = make_run(tmp_path / "new[red]y", [rec(mech="[red]softmx")] + [rec()])
    code, out, err = run_cli(monkeypatch, capsys, "compare", b, n, "--allow-missing")
    flat = "".join(out.split())
    assert code == 0 and "base[bold]x" in flat and "new[red]y" in flat and "[red]softmx" in flat


def test_fail_lines_are_not_wrapped(tmp_path, monkeypatch, capsys):
    reason = "RuntimeError: " + "a long reason that a narrow terminal would wrap " * 4
    b, n = runs(tmp_path, [rec()], [dataclasses.replace(rec(status="error"), reason=reason)])
    code, _, err = run_cli(monkeypatch, capsys, "compare", b, n)
    assert code == 1
    line = f"FAIL linear-masked fwd b1 h4 n1024 d32 fp32 decay: status: ok -> error: {reason}"
    assert line + "\n" in err
