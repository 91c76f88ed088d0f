"""attnbench profile on the CPU: traces that parse, kernel tables that add up, what is absent
said."""

import gzip
import json

import pandas as pd
import pytest
from fakes import make_case, run_cli

from attnbench import ncu as nsight
from attnbench import profile
from attnbench.records import load, read_meta

CALLS = 2
# Large enough that the ops, not the Python between them, take most of a call on a busy CPU.
PROFILE = ["profile", "--device", "cpu", "--mechanisms", "softmax-naive", "--seq-lens", "512",
           "--heads", "4", "--head-dim", "32", "--modes", "fwd,bwd", "--calls", str(CALLS),
           "--memory-timeline", "--ncu", "--max-case-seconds", "60"]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("profile") / "run"
    code, out, err = run_cli(*PROFILE, "--out", run_dir)
    assert code == 0, err
    return run_dir, out


def test_every_case_has_a_trace_that_parses(profiled):
    run_dir, _ = profiled
    traces = sorted((run_dir / profile.PROFILES_DIR).glob("*.trace.json.gz"))
    assert [t.name.split("-")[2] for t in traces] == ["bwd", "fwd"]  # softmax-naive-<mode>-
    for path in traces:
        trace = json.loads(gzip.decompress(path.read_bytes()))
        names = [e.get("name") for e in trace["traceEvents"]]
        assert names.count(profile.CALL_RANGE) == CALLS
        assert any(str(n).startswith("aten::") for n in names)
        assert path.stat().st_size < 1 << 20  # small: no shapes, no stacks


def test_kernel_summary_is_tidy_positive_and_adds_up(profiled):
    run_dir, _ = profiled
    df = pd.read_parquet(run_dir / profile.KERNELS_PARQUET)
    assert list(df.columns) == profile.KERNEL_COLUMNS
    assert set(df["mode"]) == {"fwd", "bwd"} and (df["kernel"] != "").all()
    assert (df["device_ms_per_call"] > 0).all() and (df["launches_per_call"] > 0).all()
    timed = load(run_dir).set_index("mode")["time_ms"]
    for mode, rows in df.groupby("mode"):
        assert rows["share"].sum() == pytest.approx(1.0)
        # the ops' own times add up to the profiled call, less the Python between them
        host = rows["host_ms_per_call"].iloc[0]
        assert 0.5 * host <= rows["device_ms_per_call"].sum() <= 1.01 * host
        assert rows["timed_ms"].iloc[0] == timed[mode] > 0  # the timing record beside it
        assert rows["trace"].iloc[0].startswith(f"{profile.PROFILES_DIR}/softmax-naive-{mode}-")
        assert 0 < rows["profile_s"].iloc[0] < 30
    assert (df["ncu"] == nsight.unavailable("cpu")).all()
    assert (run_dir / profile.KERNELS_CSV).is_file()
    assert read_meta(run_dir)["peaks"]["bandwidth_gbps"] > 0


def test_the_table_and_what_the_cpu_cannot_do_are_printed(profiled):
    _, out = profiled
    assert "softmax-naive-fwd-b1-h4-n512-d32-fp32" in out and "aten::bmm" in out
    assert "kernels sum to" in out and "the timed call's median is" in out
    assert out.count("--memory-timeline: unavailable on the CPU") == 1
    assert out.count("--ncu: ncu profiles CUDA kernels") == 1


@pytest.mark.parametrize("args, message", [
    (["--calls", "0"], "--calls must be at least 1"),
    (["--mechanisms", "nosuch"], "unknown mechanism or family 'nosuch'"),
    (["--seq-lens", "1q"], "1q"),
    (["--dtype", "fp8"], "unknown dtype 'fp8'"),
], ids=["calls", "mechanism", "size", "dtype"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    code, out, err = run_cli("profile", "--device", "cpu", "--out", tmp_path / "r", *args)
    assert code == 2 and message in err
    assert err.strip().count("\n") == 0 and err.startswith("attnbench: error:")
    assert not (tmp_path / "r").exists()


def test_ncu_absent_from_the_path_is_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    metrics, why = nsight.kernel_metrics(make_case("sdpa-flash"), "cuda")
    assert metrics == {} and why == "ncu (Nsight Compute) is not on the PATH"


def _csv_line(*cells) -> str:
    return ",".join(f'"{c}"' for c in cells)


NCU_CSV = "\n".join([
    "==PROF== Connected to process 123",
    _csv_line("ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream",
              "dram__throughput.avg.pct_of_peak_sustained_elapsed",
              "launch__registers_per_thread", "smsp__sass_inst_executed_op_local_st.sum"),
    _csv_line("", "", "", "", "", "", "", "%", "register/thread", "inst"),  # the units row
    _csv_line(0, 123, "python3", "vm", "_fwd_kernel", 1, 7, "91.5", 128, 0),
    _csv_line(1, 123, "python3", "vm", "void at::native::elementwise_kernel<128, 4>(int, float)",
              1, 7, 40, 32, "1,024"),
    _csv_line(2, 123, "python3", "vm", "_fwd_kernel", 1, 7, "88.5", 128, 0),
])


def test_ncu_csv_is_read_per_kernel_and_matched_by_name():
    metrics = nsight.parse_raw_csv(NCU_CSV)
    assert metrics["_fwd_kernel"] == {"dram_pct": 90.0, "registers": 128.0, "local_stores": 0.0}
    long_name = "void at::native::elementwise_kernel<128, 4>(int, float)"
    assert metrics[long_name]["local_stores"] == 1024
    assert nsight.match(long_name, metrics)
    assert nsight.match(long_name.split("(")[0], metrics)["dram_pct"] == 40
    assert nsight.match("_other_kernel", metrics) is None
    assert nsight.parse_raw_csv("==ERROR== ERR_NVGPUCTRPERM") == {}
    assert "ERR_NVGPUCTRPERM" in nsight._why("==ERROR== ERR_NVGPUCTRPERM - no permission", 1)


def test_memory_timeline_png_from_a_snapshot(tmp_path):
    """The PNG is drawn from the snapshot's device trace (the CUDA path, without a GPU)."""
    mib = 1 << 20
    snapshot = {"device_traces": [[
        {"action": "alloc", "size": 4 * mib, "time_us": 1000},
        {"action": "alloc", "size": 2 * mib, "time_us": 1500},
        {"action": "free_requested", "size": 4 * mib, "time_us": 1800},
        {"action": "free_completed", "size": 4 * mib, "time_us": 2000},
    ]]}
    times, allocated = profile.allocated_over_time(snapshot, before=mib)
    assert times == [0.0, 0.0, 0.5, 1.0]
    assert allocated == [mib, 5 * mib, 7 * mib, 3 * mib]
    peak = profile.memory_timeline_png(snapshot, mib, tmp_path / "x.memory.png", title="x")
    assert peak == 7 * mib and (tmp_path / "x.memory.png").stat().st_size > 1000


def test_help_lists_the_sweep_options_of_run():
    code, out, _ = run_cli("profile", "--help")
    assert code == 0 and "<bool>" not in out
    for option in ("--seq-lens", "--mechanisms", "--modes", "--value-dim", "--calls",
                   "--memory-timeline", "--ncu"):
        assert option in out


def test_a_torn_kernels_line_is_counted_not_a_crash(profiled, tmp_path):
    run_dir, _ = profiled
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / profile.KERNELS_JSONL).write_text(
        (run_dir / profile.KERNELS_JSONL).read_text() + '{"mechanism": "softm')
    df = profile.load_kernels(copy)
    assert df.attrs["damaged"] == 1 and len(df) == len(profile.load_kernels(run_dir))


def test_resume_profiles_the_cases_not_reached(profiled, tmp_path):
    """A profile stopped after its first case: --resume times and profiles the rest."""
    run_dir, _ = profiled
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "meta.json").write_text((run_dir / "meta.json").read_text())
    lines = (run_dir / "records.jsonl").read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if '"status"' in line)
    (copy / "records.jsonl").write_text("".join(lines[:first + 1]))
    kept = [line for line in (run_dir / profile.KERNELS_JSONL).read_text().splitlines(True)
            if '"mode": "fwd"' in line]
    (copy / profile.KERNELS_JSONL).write_text("".join(kept))
    code, out, err = run_cli("profile", "--resume", copy, "--device", "cpu", "--calls", "1")
    assert code == 0, err
    df = profile.load_kernels(copy)
    assert sorted(set(df["mode"])) == ["bwd", "fwd"] and len(load(copy)) == 2
    code, _, err = run_cli("profile", "--resume", copy, "--device", "cpu", "--seq-lens", "1k")
    assert code == 2 and "--resume takes the sweep from DIR/meta.json" in err
