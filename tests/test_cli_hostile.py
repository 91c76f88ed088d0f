"""Issue 21: the command line under a hostile user: out-of-range numbers, hostile journals,
duplicates, scheduler environments, signals, bad hook values, full disks and odd options."""

import json
import math

import pytest
from fakes import make_case, make_run, run_cli

from attnbench.records import Record

TINY = ["run", "--device", "cpu", "--mechanisms", "linear-masked", "--seq-lens", "64,128",
        "--heads", "2", "--head-dim", "16", "--max-case-seconds", "60", "--modes", "fwd,bwd",
        "--no-plot"]  # --no-plot last: a test drops it


def ok_record(mode="fwd", n=64, t=1.0) -> Record:
    case = make_case("linear-masked", mode, heads=2, seq_len=n, head_dim=16)
    return Record(case, "linear", "cpu", "ok", time_ms=t, time_ms_p20=t * 0.99,
                  time_ms_p80=t * 1.01, reps=10, tokens_per_s=n / (t / 1e3), tflops=1e-3,
                  max_rel_err=1e-7, check="pass", check_tol=1e-5)


def fake_run(path):
    return make_run(path, [ok_record(mode=m, n=n) for m in ("fwd", "bwd") for n in (64, 128)])


def one_line_error(code, out, err, *needles):
    assert code == 2, (out, err)
    assert err.startswith("attnbench: error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in out + err
    for needle in needles:
        assert needle in err, (needle, err)


def views(run_dir, tmp_path):
    base = tmp_path / "base"
    if not base.exists():
        fake_run(base)
    return {"report": ["report", run_dir],
            "plot": ["plot", run_dir, "--out", tmp_path / "figs", "--format", "png"],
            "export": ["export", run_dir],
            "compare": ["compare", base, run_dir, "--json"]}


# --- item 2: numbers out of range ----------------------------------------------------------------

HOSTILE = {
    "seq_len Infinity": dict(seq_len=math.inf),
    "rank Infinity": dict(rank=math.inf),
    "rank 2**70": dict(rank=2**70),
    "seq_len 2**70": dict(seq_len=2**70),
    "tokens_per_s Infinity": dict(tokens_per_s=math.inf),
    "time_ms NaN": dict(time_ms=math.nan),
    "seq_len 0": dict(seq_len=0),
    "batch -4": dict(batch=-4),
    "unknown mode": dict(mode="sideways"),
    "unknown dtype": dict(dtype="fp8"),
    "negative time": dict(time_ms=-3.0),
}


@pytest.mark.parametrize("view", ["report", "plot", "export", "compare"])
@pytest.mark.parametrize("what", list(HOSTILE))
def test_an_impossible_journal_value_is_a_damaged_line_in_every_view(tmp_path, view, what):
    run_dir = fake_run(tmp_path / "run")
    row = ok_record(n=256).row() | HOSTILE[what]
    with open(run_dir / "records.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    code, out, err = run_cli(*views(run_dir, tmp_path)[view])
    assert code == 0, err
    assert "Traceback" not in out + err and "Infinity" not in out
    assert "line 5:" in " ".join((err + out).split())  # compare --json: in its warnings
    code, out, err = run_cli(*views(run_dir, tmp_path)[view], "--strict")
    one_line_error(code, out, err, "1 damaged line(s)", "line 5")


# --- item 3: duplicates --------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["report", "plot", "export", "compare"])
def test_duplicates_are_named_and_strict_fails_on_them(tmp_path, view):
    run_dir = make_run(tmp_path / "run", [ok_record(), ok_record(t=100.0)])
    code, out, err = run_cli(*views(run_dir, tmp_path)[view])
    flat = " ".join((err + out).split())
    assert code in (0, 1) and "Traceback" not in out + err  # compare: the slowdown fails it
    assert "1 case(s) recorded more than once" in flat
    assert "linear-masked fwd b1-h2-n64-d16-fp32-decay (2 records: ok 1 ms, ok 100 ms)" in flat
    code, out, err = run_cli(*views(run_dir, tmp_path)[view], "--strict")
    one_line_error(code, out, err, "recorded more than once", "linear-masked fwd b1-h2-n64")


@pytest.mark.parametrize("args", [
    ["--seq-lens", "99999999999999999999"], ["--seq-lens", "1k..2000000m"],
    ["--batch", "99999999999999999999"], ["--head-dim", "2000000m"],
])
def test_a_huge_size_is_refused_with_one_line(tmp_path, args):
    code, out, err = run_cli(*TINY, *args, "--out", tmp_path / "run")
    one_line_error(code, out, err, "at most 1048576m")
    assert not (tmp_path / "run").exists()


# --- item 4: a scheduler's RANK, WORLD_SIZE, TORCHELASTIC_RUN_ID --------------------------------


@pytest.fixture
def environ(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK",
                 "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch.setenv


@pytest.mark.parametrize("env", [dict(RANK="1"), dict(RANK="1", WORLD_SIZE="2"),
                                 dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1"),
                                 dict(TORCHELASTIC_RUN_ID="x", RANK="3")])
def test_a_stray_rank_does_not_silence_an_error(tmp_path, environ, env):
    for name, value in env.items():
        environ(name, value)
    code, out, err = run_cli(*TINY, "--seq-lens", "0", "--out", tmp_path / "run")
    assert code == 2 and "attnbench: error: bad size '0'" in err and "Traceback" not in err


def test_a_stray_torchelastic_run_id_runs_as_one_process(tmp_path, environ):
    environ("TORCHELASTIC_RUN_ID", "x")
    code, out, err = run_cli(*TINY, "--modes", "fwd", "--seq-lens", "64", "--out",
                             tmp_path / "run")
    assert code == 0 and "Traceback" not in out + err, err
    assert "TORCHELASTIC_RUN_ID set in the environment but not RANK" in " ".join(err.split())
    assert "runs as one process" in err


def test_a_group_whose_other_ranks_never_come_says_so_and_gives_up(tmp_path, environ,
                                                                    monkeypatch):
    import socket
    from datetime import timedelta

    from attnbench import sharded

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(port)).items():
        environ(name, value)
    monkeypatch.setattr(sharded, "JOIN_TIMEOUT", timedelta(seconds=2))  # rank 1 never comes
    code, out, err = run_cli(*TINY, "--out", tmp_path / "run")
    flat = " ".join(err.split())
    assert code == 2 and "Traceback" not in out + err, err
    assert f"rank 0 of 2 (RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are set in the " \
           f"environment): waiting for the other ranks at 127.0.0.1:{port}" in flat
    assert "attnbench: error: rank 0 could not join the 2 ranks" in flat
    assert "unset RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT" in flat


@pytest.mark.parametrize("env, needle", [
    (dict(RANK="x", WORLD_SIZE="2"), "must be whole numbers"),
    (dict(RANK="2", WORLD_SIZE="2"), "name no process group"),
])
def test_a_group_environment_that_names_no_group_is_one_line(tmp_path, environ, env, needle):
    for name, value in (dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="29999") | env).items():
        environ(name, value)
    code, out, err = run_cli(*TINY, "--out", tmp_path / "run")
    one_line_error(code, out, err, needle)


# --- item 7: the planted-slowdown hook ------------------------------------------------------------


@pytest.mark.parametrize("value, needle", [
    ("linear-masked", "NAME:FRACTION"), ("linear-masked:x", "NAME:FRACTION"),
    ("linear-masked:nan", "NAME:FRACTION"), ("linear-masked:inf", "NAME:FRACTION"),
    ("linear-masked:-1", "NAME:FRACTION"), ("linear-masked:1e9", "at most 10"),
    ("nosuch:0.1", "unknown mechanism 'nosuch'"),
])
def test_a_bad_plant_value_is_one_line_and_exit_2(tmp_path, monkeypatch, value, needle):
    monkeypatch.setenv("ATTNBENCH_PLANT_SLOWDOWN", value)
    code, out, err = run_cli(*TINY, "--out", tmp_path / "run")
    one_line_error(code, out, err, "ATTNBENCH_PLANT_SLOWDOWN" if ":" in needle else needle,
                   needle)
    assert not (tmp_path / "run").exists()


def test_a_planted_run_is_marked_in_meta_records_report_and_compare(tmp_path, monkeypatch):
    base = tmp_path / "base"
    code, _, err = run_cli(*TINY, "--modes", "fwd", "--seq-lens", "64", "--out", base)
    assert code == 0, err
    monkeypatch.setenv("ATTNBENCH_PLANT_SLOWDOWN", "linear-masked:0.5")
    slow = tmp_path / "slow"
    code, out, err = run_cli(*TINY, "--modes", "fwd", "--seq-lens", "64", "--out", slow)
    assert code == 0, err
    meta = json.loads((slow / "meta.json").read_text())
    assert meta["planted_slowdown"] == {"linear-masked": 0.5}
    row = json.loads((slow / "records.jsonl").read_text().splitlines()[-1])
    assert row["planted"] == 0.5 and row["status"] == "ok"
    assert "planted slowdown (ATTNBENCH_PLANT_SLOWDOWN" in " ".join(out.split())
    monkeypatch.delenv("ATTNBENCH_PLANT_SLOWDOWN")
    assert "planted_slowdown" not in json.loads((base / "meta.json").read_text())
    code, out, err = run_cli("compare", base, slow)
    assert "planted slowdown" in " ".join(err.split()) and "linear-masked +50%" in err


# --- item 6: profile -----------------------------------------------------------------------------


def test_profile_resume_of_a_run_directory_is_refused_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run_cli(*TINY, "--modes", "fwd", "--seq-lens", "64", "--out", run_dir)
    assert code == 0, err
    code, out, err = run_cli("profile", "--resume", run_dir, "--device", "cpu")
    one_line_error(code, out, err, "was made by attnbench run, not attnbench profile")
    assert not (run_dir / "profiles").exists()


@pytest.mark.parametrize("top", ["0", "-5"])
def test_profile_top_below_1_is_refused(tmp_path, top):
    code, out, err = run_cli("profile", "--device", "cpu", "--mechanisms", "linear-masked",
                             "--seq-lens", "64", "--top", top, "--out", tmp_path / "run")
    one_line_error(code, out, err, f"--top must be at least 1, not {top}")
    assert not (tmp_path / "run").exists()


def test_profile_calls_are_bounded_by_max_case_seconds():
    from attnbench.profile import calls_within

    assert calls_within(3, 1.0, 10.0) == (3, "")
    n, note = calls_within(100_000, 20.0, 1.0)  # 1 s holds 50 calls of 20 ms, 2 to warm up
    assert n == 48 and "profiled 48 of --calls 100000" in note and "--max-case-seconds 1" in note
    assert calls_within(5, 5000.0, 1.0)[0] == 1  # one call at least


def test_profile_says_when_it_profiles_fewer_calls_than_asked(tmp_path, install):
    from fakes import fake, sleepy

    install(fake("fake-slow", sleepy(0.02)))
    code, out, err = run_cli("profile", "--device", "cpu", "--mechanisms", "fake-slow",
                             "--seq-lens", "128", "--heads", "2", "--head-dim", "16", "--modes",
                             "fwd", "--calls", "100000", "--max-case-seconds", "1", "--out",
                             tmp_path / "run")
    assert code == 0, err
    assert "of --calls 100000: 100000 calls of" in " ".join(out.split())


# --- item 8: a full disk --------------------------------------------------------------------------


@pytest.fixture
def full_disk(monkeypatch):
    """``fill(after)``: from the ``after``-th journal append on, and for every table and figure,
    the disk is full (the tables and figures leave the empty file a real full disk leaves)."""
    import errno
    import os

    import matplotlib.figure
    import pandas as pd

    from attnbench import records

    def enospc(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def empty_then_full(self, path, *args, **kwargs):
        open(path, "wb").close()
        enospc()

    def fill(after: int):
        syncs = []
        real_fsync = os.fsync

        def fsync(fd):
            syncs.append(fd)
            if len(syncs) > after:
                enospc()
            real_fsync(fd)

        monkeypatch.setattr(records.os, "fsync", fsync)
        for owner, name in ((pd.DataFrame, "to_parquet"), (pd.DataFrame, "to_csv"),
                            (matplotlib.figure.Figure, "savefig")):
            monkeypatch.setattr(owner, name, empty_then_full)

    yield fill
    monkeypatch.undo()


@pytest.mark.parametrize("after, full", [(3, "records.jsonl"), (1000, "records.parquet")])
def test_a_full_disk_names_the_file_gives_the_resume_hint_and_leaves_no_empty_file(
        tmp_path, full_disk, monkeypatch, after, full):
    run_dir = tmp_path / "run"
    full_disk(after)
    code, out, err = run_cli(*TINY[:-1], "--out", run_dir)  # with plots
    one_line_error(code, out, err, f"cannot write {run_dir / full}: No space left on device",
                   f"continue with --resume {run_dir}")
    left = sorted(p.name for p in run_dir.iterdir())
    for name in ("records.parquet", "records.csv", "sweep.png", "sweep.svg"):
        assert name not in left, left
    assert not [name for name in left if "partial" in name], left
    monkeypatch.undo()  # room made: the hint works
    code, out, err = run_cli("run", "--resume", run_dir)
    assert code == 0, err
    assert {"records.parquet", "records.csv", "sweep.png"} <= {p.name for p in run_dir.iterdir()}


# --- item 8: names, empty lists, --world-sizes ------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "/tmp/x", ""])
def test_a_run_name_that_is_a_path_is_refused(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(*TINY, "--name", name)
    one_line_error(code, out, err, "--name", "use --out DIR")
    assert not (tmp_path / "results").exists() and not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize("command, option", [
    ("run", "--mechanisms"), ("run", "--seq-lens"), ("run", "--value-dim"),
    ("run", "--world-sizes"), ("run", "--dtype"), ("tgs", "--size"), ("tgs", "--models"),
    ("tgs", "--mechanisms"), ("tgs", "--tokens-per-step"), ("profile", "--mechanisms"),
])
def test_every_empty_list_option_is_an_error(tmp_path, command, option):
    args = ["--device", "cpu", "--out", tmp_path / "run"]
    for value in ("", " , "):
        code, out, err = run_cli(command, *args, option, value)
        one_line_error(code, out, err, f"empty {option} list")
    assert not (tmp_path / "run").exists()


def test_world_sizes_without_a_sequence_parallel_mechanism_is_refused(tmp_path):
    code, out, err = run_cli(*TINY, "--world-sizes", "1,2", "--out", tmp_path / "run")
    one_line_error(code, out, err, "--world-sizes applies to sequence-parallel mechanisms",
                   "lightning2-sp")


def test_the_resume_progress_bar_counts_only_the_cases_it_runs(tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run_cli(*TINY, "--modes", "fwd,bwd", "--seq-lens", "64,128,256", "--out",
                           run_dir)
    assert code == 0, err
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines if '"status"' in line]
    killed = {k: recs[2][k] for k in ("mechanism", "mode", "batch", "heads", "seq_len",
                                      "head_dim", "value_dim", "dtype", "decay")}
    (run_dir / "records.jsonl").write_text("\n".join(
        [json.dumps(r) for r in recs[:2]] + [json.dumps({"started": killed})]) + "\n")
    code, out, err = run_cli("run", "--resume", run_dir, "--no-plot")
    assert code == 0, err
    assert "6 cases (3 to run)" in out and " 3/3 " in out and "4/3" not in out


def test_a_median_of_a_wide_spread_is_marked_in_tables(tmp_path):
    steady, noisy = ok_record(n=64), ok_record(n=128)
    noisy = Record(noisy.case, "linear", "cpu", "ok", time_ms=2.0, time_ms_p20=0.5,
                   time_ms_p80=5.5, reps=10, tokens_per_s=64e3)  # p20..p80 spans 11x
    run_dir = make_run(tmp_path / "run", [steady, noisy])
    code, out, err = run_cli("report", run_dir, "--metric", "time")
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.lstrip("│ ").startswith("linear-masked"))
    assert "2~" in row and "1~" not in row
    assert "~ wide spread" in out


def test_the_readme_says_the_journal_holds_marker_lines_too():
    from pathlib import Path

    text = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    assert "`records.jsonl`: one line per case" not in text
    assert "a `started` line before each measured case" in text and "`abandoned` line" in text


# --- the first minute on a GPU ------------------------------------------------------------------


def test_a_quick_run_says_how_to_get_the_mechanisms_it_left_out(capsys):
    from attnbench.console import left_out_note
    from attnbench.spec import build_spec

    left_out_note(build_spec(None, "cuda"))
    out = " ".join(capsys.readouterr().out.split())
    assert "not in the quick preset" in out and "peer-fla-chunk" in out
    assert "--mechanisms all (or --preset full)" in out
    left_out_note(build_spec("full", "cuda"))
    assert capsys.readouterr().out == ""


# --- beyond the list: meta.json read as untrusted too ---------------------------------------------


@pytest.mark.parametrize("damage", [
    lambda m: m.pop("spec"), lambda m: m.update(spec=5),
    lambda m: m["spec"].update(seq_lens=[2**70]), lambda m: m["spec"].update(seq_lens="64"),
    lambda m: m["spec"].update(max_case_seconds=None), lambda m: m["spec"].pop("device"),
    lambda m: m["spec"].update(device="tpu"), lambda m: m["spec"].update(batch=[0]),
], ids=["no spec", "spec 5", "seq_len 2**70", "seq_lens a string", "budget null",
        "no device", "device tpu", "batch 0"])
def test_resume_of_a_damaged_meta_spec_is_one_line(tmp_path, damage):
    run_dir = tmp_path / "run"
    code, _, err = run_cli(*TINY, "--modes", "fwd", "--seq-lens", "64", "--out", run_dir)
    assert code == 0, err
    meta = json.loads((run_dir / "meta.json").read_text())
    damage(meta)
    (run_dir / "meta.json").write_text(json.dumps(meta))
    code, out, err = run_cli("run", "--resume", run_dir)
    one_line_error(code, out, err, f"{run_dir}/meta.json:", "cannot be resumed")
    code, out, err = run_cli("report", run_dir)  # the records still read
    assert code == 0 and "linear-masked" in out, err


def test_impossible_kernel_rows_are_counted_damaged_and_show_no_traceback(tmp_path):
    from attnbench import profile

    run_dir = tmp_path / "run"
    code, out, err = run_cli("profile", "--device", "cpu", "--mechanisms", "linear-masked",
                             "--seq-lens", "64", "--heads", "2", "--head-dim", "16", "--modes",
                             "fwd", "--calls", "1", "--out", run_dir)
    assert code == 0, err
    good = (run_dir / profile.KERNELS_JSONL).read_text().splitlines()
    row = json.loads(good[0])
    bad = [json.dumps(row | dict(device_ms_per_call=math.inf)),
           json.dumps(row | dict(seq_len=0)), json.dumps(row | dict(kernel=5)), "null",
           json.dumps(row | dict(share=-1.0))]
    with open(run_dir / profile.KERNELS_JSONL, "ab") as f:
        f.write(("\n".join(bad) + "\n").encode() + b'{"kernel": "\xff"}\n')
    df = profile.load_kernels(run_dir)
    assert df.attrs["damaged"] == len(bad) + 1 and len(df) == len(good)
    from rich.console import Console

    with open(tmp_path / "shown.txt", "w") as shown:
        profile.show_profile(run_dir, Console(file=shown), top=3)
    assert "linear-masked-fwd" in (tmp_path / "shown.txt").read_text()
