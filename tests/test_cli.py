"""The command line as a user meets it: real argv, exit codes, one-line errors, files written."""

import json
import math
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from fakes import fake, make_case, make_run, scaled, sleepy

from attnbench import records
from attnbench.cli import main
from attnbench.records import Record

TINY = ["run", "--device", "cpu", "--mechanisms", "linear-masked,softmax-naive",
        "--seq-lens", "64,128", "--heads", "2", "--head-dim", "16", "--max-case-seconds", "60",
        "--modes", "fwd,bwd"]


def cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["attnbench", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_list_json(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "list", "--json", "--device", "cpu")
    rows = json.loads(out)
    assert code == 0
    names = {r["name"] for r in rows}
    assert {"linear-recurrent", "linear-masked", "linear-cumsum", "softmax-naive",
            "sdpa-math"} <= names
    for r in rows:
        assert {"name", "family", "available", "reason"} <= set(r)
        assert r["available"] or r["reason"]


COMMANDS = ("list", "run", "tgs", "profile", "report", "plot", "env", "compare", "export")


def test_help_on_every_command(monkeypatch, capsys):
    from attnbench.cli import app

    registered = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert registered == set(COMMANDS)  # a new command is added here, and to the docstring
    listed = sys.modules[main.__module__].__doc__.splitlines()[0]  # cli.py's first line
    _, top, _ = cli(monkeypatch, capsys, "--help")
    for command in COMMANDS:
        assert f" {command} " in top and f" {command} " in listed.replace("``", " ")
        code, out, _ = cli(monkeypatch, capsys, command, "--help")
        assert code == 0 and "Usage" in out


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_shows_no_type_after_flags(monkeypatch, capsys, command):
    """Issue 12 item 8: typer printed `<bool>` after --plot/--no-plot, --json, --help ..."""
    code, out, _ = cli(monkeypatch, capsys, *filter(None, [command]), "--help")
    assert code == 0 and "--help" in out
    assert "<bool>" not in out
    if command == "run":
        assert "--no-plot" in out and "<float>" in out  # options that take values keep theirs


@pytest.mark.parametrize("args, message", [
    (["--seq-lens", "1k.."], "bad range"),
    (["--seq-lens", "abc"], "bad size"),
    (["--seq-lens", "0"], "positive"),
    (["--seq-lens", "-1"], "bad size"),
    (["--seq-lens", "4k..1k"], "larger than"),
    (["--seq-lens", ""], "empty --seq-lens list"),
    (["--batch", "0"], "positive"),
    (["--mechanisms", "nosuch"], "unknown mechanism or family 'nosuch'"),
    (["--dtype", "fp8"], "unknown dtype"),
    (["--modes", "sideways"], "unknown mode"),
    (["--preset", "huge"], "unknown preset"),
    (["--device", "tpu"], "unknown device"),
    (["--time-limit", "0"], "--time-limit 0: give a number of seconds above 0"),
    (["--time-limit", "nan"], "--time-limit nan: give a number of seconds above 0"),
    (["--time-limit", "60", "--gpus", "2"], "--time-limit is for a run in one process"),
])
def test_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, args, message):
    out_dir = tmp_path / "run"
    code, out, err = cli(monkeypatch, capsys, "run", "--device", "cpu", "--out", out_dir, *args)
    assert code == 2
    assert message in err and err.startswith("attnbench: error:")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    assert not out_dir.exists(), "no half-written run directory"


def test_head_dim_one_mechanism_cannot_take_is_recorded_unsupported(monkeypatch, capsys,
                                                                     tmp_path, install):
    install(fake("fake-d32", scaled(1.0), head_dims=(32, 64)))
    code, _, _ = cli(monkeypatch, capsys, "run", "--device", "cpu", "--mechanisms",
                     "fake-d32,linear-masked", "--seq-lens", "64", "--head-dim", "16",
                     "--modes", "fwd", "--out", tmp_path / "r", "--no-plot")
    df = pd.read_parquet(tmp_path / "r" / "records.parquet")
    assert code == 0
    assert df.set_index("mechanism").loc["fake-d32", "status"] == "unsupported"
    assert df.set_index("mechanism").loc["linear-masked", "status"] == "ok"


@pytest.mark.parametrize("command", ["report", "plot"])
def test_bad_run_directories(monkeypatch, capsys, tmp_path, command):
    code, _, err = cli(monkeypatch, capsys, command, tmp_path / "missing")
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli(monkeypatch, capsys, command, tmp_path / "empty")
    assert code == 2 and "not an attnbench run directory" in err
    other = tmp_path / "other"
    other.mkdir()
    (other / "meta.json").write_text('{"schema_version": 0}')
    code, _, err = cli(monkeypatch, capsys, command, other)
    assert code == 2 and "schema version 0" in err


def test_run_report_plot_resume(monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "run"
    code, out, _ = cli(monkeypatch, capsys, *TINY, "--out", run_dir)
    assert code == 0, out
    assert "running on the CPU" in out and "M tokens/s" in out
    for name in ("meta.json", "records.jsonl", "records.parquet", "records.csv", "sweep.png",
                 "sweep.svg"):
        assert (run_dir / name).is_file(), name
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["schema_version"] == 2 and meta["command"].startswith("attnbench run")
    assert meta["environment"]["packages"]["torch"]
    df = pd.read_parquet(run_dir / "records.parquet")
    assert len(df) == 8 and set(df["status"]) == {"ok"} and set(df["check"]) == {"pass"}

    code, out, _ = cli(monkeypatch, capsys, "report", run_dir)
    assert code == 0 and "linear-masked" in out and "time, ms" in out
    code, out, _ = cli(monkeypatch, capsys, "plot", run_dir, "--out", tmp_path / "figs",
                       "--format", "png")
    assert code == 0 and (tmp_path / "figs" / "sweep.png").stat().st_size > 10_000

    # A run that died after three cases (between cases): resume runs only the rest.
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    third = [i for i, line in enumerate(lines) if '"started"' not in line][2]
    (run_dir / "records.jsonl").write_text("\n".join(lines[:third + 1]) + "\n")
    code, out, _ = cli(monkeypatch, capsys, "run", "--resume", run_dir, "--no-plot")
    assert code == 0 and "(5 to run)" in out
    df = pd.read_parquet(run_dir / "records.parquet")
    assert len(df) == 8 and df[["mechanism", "mode", "seq_len"]].duplicated().sum() == 0

    # Refusals: an existing run directory, and sweep options beside --resume.
    code, _, err = cli(monkeypatch, capsys, *TINY, "--out", run_dir)
    assert code == 2 and "already holds a run" in err and f"--resume {run_dir}" in err
    code, _, err = cli(monkeypatch, capsys, "run", "--resume", run_dir, "--seq-lens", "1k")
    assert code == 2 and "--resume takes the sweep" in err


def test_env(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "env", "--json")
    info = json.loads(out)
    assert code == 0 and info["packages"]["torch"] and "git_commit" in info


# --- issue 12: files, paths and text a user or a library hands us ----------------------------


def ok_record(mech="linear-masked", mode="fwd", n=64, t=1.0) -> Record:
    case = make_case(mech, mode, heads=2, seq_len=n, head_dim=16)
    return Record(case, "linear", "cpu", "ok", time_ms=t, time_ms_p20=t * 0.99,
                  time_ms_p80=t * 1.01, reps=10, tokens_per_s=n / (t / 1e3), tflops=1e-3,
                  max_rel_err=1e-7, check="pass", check_tol=1e-5)


def fake_run(path: Path) -> Path:
    """A run directory made on the spot: linear-masked fwd and bwd at 64 and 128."""
    return make_run(path, [ok_record(mode=m, n=n) for m in ("fwd", "bwd") for n in (64, 128)])


def unwritable(tmp_path: Path) -> Path:
    """A directory this process cannot write in: read-only by its mode, or, for root (whom
    modes do not stop), /sys, which even root cannot create files in."""
    if os.geteuid() == 0:
        return Path("/sys")
    path = tmp_path / "read-only"
    path.mkdir()
    path.chmod(0o555)
    return path


def one_line_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2, (out, err)
    assert err.startswith("attnbench: error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in out + err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize("where", ["a file", "under a file", "unwritable"])
def test_run_out_that_cannot_be_written_is_one_line(monkeypatch, capsys, tmp_path, where):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    out = {"a file": a_file, "under a file": a_file / "run",
           "unwritable": unwritable(tmp_path) / "run"}[where]
    code, stdout, err = cli(monkeypatch, capsys, *TINY, "--out", out, "--no-plot")
    one_line_error(code, stdout, err, str(out))
    assert a_file.read_text() == "not a directory"


def test_run_in_an_unwritable_working_directory_is_one_line(monkeypatch, capsys, tmp_path):
    run_dir = fake_run(tmp_path / "run")
    monkeypatch.chdir(unwritable(tmp_path))
    code, out, err = cli(monkeypatch, capsys, *TINY, "--no-plot")  # default out: results/...
    one_line_error(code, out, err, "cannot create results")
    code, out, _ = cli(monkeypatch, capsys, "report", run_dir)  # reading still works
    assert code == 0 and "linear-masked" in out


@pytest.mark.parametrize("where", ["a file", "under a file", "unwritable", "an unwritable dir"])
def test_plot_out_that_cannot_be_written_is_one_line(monkeypatch, capsys, tmp_path, where):
    run_dir = fake_run(tmp_path / "run")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = {"a file": a_file, "under a file": a_file / "figs",
           "unwritable": unwritable(tmp_path) / "figs",
           "an unwritable dir": unwritable(tmp_path)}[where]  # exists: fails at the first file
    code, stdout, err = cli(monkeypatch, capsys, "plot", run_dir, "--out", out, "--format", "png")
    one_line_error(code, stdout, err, str(out))


@pytest.mark.parametrize("where", ["a directory", "under a file", "unwritable"])
def test_export_out_that_cannot_be_written_is_one_line(monkeypatch, capsys, tmp_path, where):
    run_dir = fake_run(tmp_path / "run")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = {"a directory": run_dir, "under a file": a_file / "bench.json",
           "unwritable": unwritable(tmp_path) / "bench.json"}[where]
    code, stdout, err = cli(monkeypatch, capsys, "export", run_dir, "--out", out)
    one_line_error(code, stdout, err, str(out))


def test_export_out_writes_the_file(monkeypatch, capsys, tmp_path):
    run_dir = fake_run(tmp_path / "run")
    code, _, err = cli(monkeypatch, capsys, "export", run_dir, "--out", tmp_path / "b.json")
    assert code == 0 and "wrote" in err
    assert len(json.loads((tmp_path / "b.json").read_text())) == 4


def _cpu_oom(q, k, v, decay=None):
    """The host allocator's own words when a case does not fit (torch's CPU OOM)."""
    if q.shape[2] >= 128:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 8 GiB")
    return scaled(1.0)(q, k, v, decay)


def test_text_in_square_brackets_is_printed_literally(monkeypatch, capsys, tmp_path, install):
    """Rich markup ate `[xformers]`, `[enforce fail ...]`, `[bold]`, `[red]` (issue 12 item 6)."""
    install(fake("fake-xf", scaled(1.0), package="attnbench_no_such_package",
                 pip_hint="pip install 'attnbench[xformers]'"),
            fake("fake-cpu-oom", _cpu_oom))
    code, out, _ = cli(monkeypatch, capsys, "list", "--device", "cpu")
    assert code == 0 and "'attnbench[xformers]'" in out.replace("\n", "")

    run_dir = tmp_path / "run[bold]x"
    code, out, err = cli(monkeypatch, capsys, "run", "--device", "cpu", "--mechanisms",
                         "fake-xf,fake-cpu-oom", "--seq-lens", "64,128", "--heads", "2",
                         "--head-dim", "16", "--modes", "fwd", "--out", run_dir, "--no-plot")
    assert code == 0, err
    assert str(run_dir) in out
    assert "[enforce fail at alloc_cpu.cpp:127]" in out  # the OOM line as it happens
    report = cli(monkeypatch, capsys, "report", run_dir)[1]
    assert f"{run_dir}: attnbench run" in report  # its header
    for text in (out, report):
        flat = " ".join(text.split())
        assert "pip install 'attnbench[xformers]'" in flat  # the report's notes
        assert "oom at 128: RuntimeError: [enforce fail at alloc_cpu.cpp:127]" in flat
    df = pd.read_parquet(run_dir / "records.parquet").set_index(["mechanism", "seq_len"])
    assert df.loc[("fake-cpu-oom", 128), "status"] == "oom"

    code, out, err = cli(monkeypatch, capsys, "run", "--device", "cpu", "--mechanisms",
                         "[red]softmx", "--out", tmp_path / "r2")
    one_line_error(code, out, err, "'[red]softmx'")
    code, out, err = cli(monkeypatch, capsys, "report", tmp_path / "[red]missing")
    one_line_error(code, out, err, "[red]missing")


# --- damaged journals, --strict --------------------------------------------------------------

HALF_RECORD = json.dumps({"mechanism": "linear-masked", "mode": "fwd", "batch": 1})
DAMAGED = ["garbage {", "{}", "[1, 2]", "42", "null", HALF_RECORD, '{"mechanism": "linear-ma']


def damage(run_dir: Path, after: int = 2) -> list[int]:
    """Insert every kind of damaged line after line ``after``; their line numbers."""
    path = run_dir / "records.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:after] + DAMAGED + lines[after:]) + "\n")
    return list(range(after + 1, after + 1 + len(DAMAGED)))


@pytest.mark.parametrize("view", ["report", "plot", "export", "compare"])
def test_damaged_lines_warn_by_number_in_every_view_and_strict_exits_2(monkeypatch, capsys,
                                                                       tmp_path, view):
    run_dir = fake_run(tmp_path / "run")
    numbers = damage(run_dir)
    args = {"report": ["report", run_dir],
            "plot": ["plot", run_dir, "--out", tmp_path / "figs", "--format", "png"],
            "export": ["export", run_dir],
            "compare": ["compare", fake_run(tmp_path / "base"), run_dir]}[view]
    code, out, err = cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "Traceback" not in out + err and "warning" in err
    flat = " ".join(err.split())
    assert f"line {numbers[0]}: not JSON" in flat
    if view == "compare":  # one warning line per damaged line
        for n in numbers:
            assert f"line {n}:" in flat
    else:  # one warning with the count
        assert f"{len(DAMAGED)} damaged line(s)" in flat
    if view == "export":
        assert len(json.loads(out)) == 4  # every good record kept
    code, out, err = cli(monkeypatch, capsys, *args, "--strict")
    one_line_error(code, out, err, f"{len(DAMAGED)} damaged line(s)", f"line {numbers[0]}")


def test_resume_reports_damaged_lines_and_measures_only_what_is_missing(monkeypatch, capsys,
                                                                        tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", "--device", "cpu", "--mechanisms", "linear-masked", "--seq-lens", "64,128",
            "--heads", "2", "--head-dim", "16", "--modes", "fwd"]
    assert cli(monkeypatch, capsys, *args, "--out", run_dir, "--no-plot")[0] == 0
    lines = [line for line in (run_dir / "records.jsonl").read_text().splitlines()
             if '"started"' not in line]  # the records, without their started markers
    (run_dir / "records.jsonl").write_text("\n".join([lines[0], *DAMAGED[:2]]) + "\n")
    code, out, err = cli(monkeypatch, capsys, "run", "--resume", run_dir, "--no-plot")
    assert code == 0 and "Traceback" not in out + err
    flat = " ".join(err.split())
    assert "line 2: not JSON" in flat and "line 3: not a record" in flat
    df = pd.read_parquet(run_dir / "records.parquet")
    assert sorted(df["seq_len"]) == [64, 128] and set(df["status"]) == {"ok"}


@pytest.mark.parametrize("view", ["report", "export", "compare"])
def test_cases_recorded_twice_warn_and_count_once(monkeypatch, capsys, tmp_path, view):
    """Issue 12 item 2: two writers (before the lock) left duplicates that views hid."""
    run_dir = fake_run(tmp_path / "run")
    path = run_dir / "records.jsonl"
    path.write_text(path.read_text() * 2)
    args = {"report": ["report", run_dir], "export": ["export", run_dir],
            "compare": ["compare", run_dir, run_dir]}[view]
    code, out, err = cli(monkeypatch, capsys, *args)
    assert code == 0 and "4 case(s) recorded more than once" in " ".join(err.split())
    if view == "export":
        names = [b["name"] for b in json.loads(out)]
        assert len(names) == len(set(names)) == 4


# --- smaller items -----------------------------------------------------------------------------


def test_max_case_seconds_nan_is_refused(monkeypatch, capsys, tmp_path):
    for value in ("nan", "inf", "0", "-1"):
        code, out, err = cli(monkeypatch, capsys, *TINY[:-2], "--max-case-seconds", value,
                             "--out", tmp_path / "run")
        one_line_error(code, out, err, "--max-case-seconds")
        assert not (tmp_path / "run").exists()


def test_a_non_empty_directory_that_is_not_a_run_is_refused_with_its_own_message(
        monkeypatch, capsys, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    code, out, err = cli(monkeypatch, capsys, *TINY, "--out", other)
    one_line_error(code, out, err, "is not empty and is not an attnbench run")
    assert "--resume" not in err  # which would fail: it is not a run
    code, out, err = cli(monkeypatch, capsys, "run", "--resume", other)
    one_line_error(code, out, err, "not an attnbench run directory")
    assert sorted(p.name for p in other.iterdir()) == ["todo.txt"]


def test_skipped_records_carry_no_time_and_notes_name_the_mode(monkeypatch, capsys, tmp_path,
                                                               install, fake_clock):
    install(fake("fake-slow", sleepy(0.05)))
    code, out, _ = cli(monkeypatch, capsys, "run", "--device", "cpu", "--mechanisms",
                       "fake-slow", "--seq-lens", "128,1k", "--heads", "2", "--head-dim", "16",
                       "--modes", "fwd", "--max-case-seconds", "2", "--out", tmp_path / "r",
                       "--no-plot")
    assert code == 0
    df = pd.read_parquet(tmp_path / "r" / "records.parquet").set_index("seq_len")
    assert df.loc[128, "status"] == "ok" and df.loc[1024, "status"] == "skipped"
    assert "predicted" in df.loc[1024, "reason"]
    assert math.isnan(df.loc[1024, "time_ms"])  # a prediction is not a measurement
    assert "fake-slow fwd skipped at 1k: predicted" in " ".join(out.split())


def test_plot_formats_match_the_help(monkeypatch, capsys, tmp_path):
    run_dir = fake_run(tmp_path / "run")
    _, out, _ = cli(monkeypatch, capsys, "plot", "--help")
    assert "png, svg, pdf" in out
    code, out, _ = cli(monkeypatch, capsys, "plot", run_dir, "--out", tmp_path / "f",
                       "--format", "pdf")
    assert code == 0 and (tmp_path / "f" / "sweep.pdf").read_bytes().startswith(b"%PDF")
    code, out, err = cli(monkeypatch, capsys, "plot", run_dir, "--format", "jpg")
    one_line_error(code, out, err, "png, svg, pdf")


def test_predicted_oom_is_recorded_without_trying(monkeypatch, capsys, tmp_path):
    code, out, _ = cli(monkeypatch, capsys, "run", "--device", "cpu", "--mechanisms",
                       "sdpa-math", "--batch", "100000", "--seq-lens", "1k", "--modes", "fwd",
                       "--out", tmp_path / "r", "--no-plot")
    assert code == 0
    df = pd.read_parquet(tmp_path / "r" / "records.parquet")
    assert list(df["status"]) == ["oom"]
    assert df["reason"][0].startswith("not tried: needs at least") and "GiB free on cpu" in \
        df["reason"][0]


def test_interrupt_hint_is_one_unbroken_line(monkeypatch, capsys, tmp_path, install):
    def interrupted(q, k, v, decay=None):
        if q.shape[2] == 128:
            raise KeyboardInterrupt
        return scaled(1.0)(q, k, v, decay)

    install(fake("fake-ctrl-c", interrupted))
    run_dir = tmp_path / ("a-long-directory-name-" * 4) / "run"
    code, _, err = cli(monkeypatch, capsys, "run", "--device", "cpu", "--mechanisms",
                       "fake-ctrl-c", "--seq-lens", "64,128", "--heads", "2", "--head-dim", "16",
                       "--modes", "fwd", "--out", run_dir, "--no-plot")
    assert code == 130
    assert f"continue with: attnbench run --resume {run_dir}\n" in err


@pytest.mark.parametrize("figure", ["paper-kernels", "tokens", "official"])
def test_plot_paper_figures_from_the_cli(monkeypatch, capsys, tmp_path, figure):
    run_dir = fake_run(tmp_path / "run")
    code, out, err = cli(monkeypatch, capsys, "plot", run_dir, "--figure", figure, "--out",
                         tmp_path / "f", "--format", "png")
    assert code == 0, err
    assert any(p.suffix == ".png" for p in (tmp_path / "f").iterdir())
    code, out, err = cli(monkeypatch, capsys, "plot", run_dir, "--figure", "nope")
    one_line_error(code, out, err, "unknown figure 'nope'", "choose from sweep", "paper-kernels")


def test_decode_run_end_to_end(monkeypatch, capsys, tmp_path):
    """`attnbench run --modes decode` on the CPU: the references decode (checked, timed,
    tokens/s = batch / step time, the cache kept recorded), a mechanism without a step is a
    record that says why; tables say what decode measures; the decode figure is drawn."""
    run_dir = tmp_path / "decode"
    code, out, err = cli(monkeypatch, capsys, "run", "--device", "cpu", "--modes", "decode",
                         "--mechanisms", "linear-recurrent,sdpa-math,linear-cumsum",
                         "--seq-lens", "64,256", "--batch", "1,3", "--heads", "2",
                         "--head-dim", "16", "--max-case-seconds", "0.6", "--no-plot",
                         "--out", run_dir)
    assert code == 0, err
    df = records.load(run_dir)
    assert set(df["mode"]) == {"decode"} and len(df) == 12
    ok = df[df["status"] == "ok"]
    assert set(ok["mechanism"]) == {"linear-recurrent", "sdpa-math"} and len(ok) == 8
    assert (ok["check"] == "pass").all() and (ok["impl"] != "").all()
    assert ((ok["tokens_per_s"] * ok["time_ms"] / 1e3 - ok["batch"]).abs() < 1e-6).all()
    state = ok[ok["mechanism"] == "linear-recurrent"]
    assert (state["cache_mib"] == state["batch"] * 2 * 16 * 16 * 4 / 2**20).all()  # any N
    kv = ok[ok["mechanism"] == "sdpa-math"]
    assert (kv["cache_mib"] == kv["batch"] * 2 * (kv["seq_len"] + 1) * 32 * 4 / 2**20).all()
    cannot = df[df["mechanism"] == "linear-cumsum"]
    assert (cannot["status"] == "unsupported").all()
    assert cannot["reason"].str.startswith("linear-cumsum cannot decode: ").all()
    assert "decode: tokens/s generated, batch / step time" in out
    assert "KV cache or state kept for the context, MiB" in out  # on the CPU too
    code, out, err = cli(monkeypatch, capsys, "plot", run_dir, "--figure", "decode",
                         "--format", "png")
    assert code == 0 and (run_dir / "decode.png").is_file(), err
    assert "- batch 3: linear-recurrent step" in out  # the figure's findings


def test_a_run_stopped_by_its_time_limit_says_what_is_left_and_resumes(monkeypatch, capsys,
                                                                       tmp_path, install,
                                                                       fake_clock):
    install(fake("fake-slow", sleepy(0.01)))  # the 512 case: ~2.4 s (test_runner)
    run_dir = tmp_path / "r"
    code, out, err = cli(monkeypatch, capsys, "run", "--device", "cpu", "--mechanisms",
                         "fake-slow", "--seq-lens", "128,256,512", "--head-dim", "16",
                         "--modes", "fwd", "--out", run_dir, "--no-plot", "--time-limit", "2")
    said = " ".join((out + err).split())
    assert code == 0 and "finished in" in said
    assert ("time limit: 1 case(s) not started (the first, fake-slow fwd n=512, predicted "
            f"2.4 s); continue with: attnbench run --resume {run_dir}") in said
    assert len(records.load(run_dir)) == 2
    code, out, err = cli(monkeypatch, capsys, "run", "--resume", run_dir, "--no-plot")
    assert code == 0 and "time limit" not in out + err and len(records.load(run_dir)) == 3


def test_a_time_limit_passed_during_a_case_says_so(monkeypatch, capsys, tmp_path, install,
                                                   fake_clock):
    install(fake("fake-slow", sleepy(0.01)))  # the 512 case: ~1 s, with nothing to predict it
    run_dir = tmp_path / "r"
    code, out, err = cli(monkeypatch, capsys, "run", "--device", "cpu", "--mechanisms",
                         "fake-slow", "--seq-lens", "512,1024", "--head-dim", "16",
                         "--modes", "fwd", "--out", run_dir, "--no-plot", "--time-limit", "0.2")
    said = " ".join((out + err).split())
    assert code == 0 and ("time limit: 1 case(s) not started (the first, fake-slow fwd "
                          "n=1024, the limit had passed)") in said
