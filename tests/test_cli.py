"""The command line as a user meets it: real argv, exit codes, one-line errors, files written."""

import json
import sys

import pandas as pd
import pytest

from attnbench.cli import main

TINY = ["run", "--device", "cpu", "--mechanisms", "linear-masked,softmax-naive",
        "--seq-lens", "64,128", "--heads", "2", "--head-dim", "16", "--max-case-seconds", "60"]


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


def test_help_on_every_command(monkeypatch, capsys):
    for command in ("list", "run", "report", "plot", "env"):
        code, out, _ = cli(monkeypatch, capsys, command, "--help")
        assert code == 0 and "Usage" in out


@pytest.mark.parametrize("args, message", [
    (["--seq-lens", "1k.."], "bad range"),
    (["--seq-lens", "abc"], "bad size"),
    (["--seq-lens", "0"], "positive"),
    (["--seq-lens", "-1"], "bad size"),
    (["--seq-lens", "4k..1k"], "larger than"),
    (["--seq-lens", ""], "empty size list"),
    (["--batch", "0"], "positive"),
    (["--mechanisms", "nosuch"], "unknown mechanism or family 'nosuch'"),
    (["--dtype", "fp8"], "unknown dtype"),
    (["--modes", "sideways"], "unknown mode"),
    (["--preset", "huge"], "unknown preset"),
    (["--device", "tpu"], "unknown device"),
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
    from fakes import fake, scaled
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
    assert meta["schema_version"] == 1 and meta["command"].startswith("attnbench run")
    assert meta["environment"]["packages"]["torch"]
    df = pd.read_parquet(run_dir / "records.parquet")
    assert len(df) == 8 and set(df["status"]) == {"ok"} and set(df["check"]) == {"pass"}

    code, out, _ = cli(monkeypatch, capsys, "report", run_dir)
    assert code == 0 and "linear-masked" in out and "time, ms" in out
    code, out, _ = cli(monkeypatch, capsys, "plot", run_dir, "--out", tmp_path / "figs",
                       "--format", "png")
    assert code == 0 and (tmp_path / "figs" / "sweep.png").stat().st_size > 10_000

    # A run that died after three cases: resume runs only the rest.
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    (run_dir / "records.jsonl").write_text("\n".join(lines[:3]) + "\n")
    code, out, _ = cli(monkeypatch, capsys, "run", "--resume", run_dir, "--no-plot")
    assert code == 0 and "(5 to run)" in out
    df = pd.read_parquet(run_dir / "records.parquet")
    assert len(df) == 8 and df[["mechanism", "mode", "seq_len"]].duplicated().sum() == 0

    # Refusals: an existing run directory, and sweep options beside --resume.
    code, _, err = cli(monkeypatch, capsys, *TINY, "--out", run_dir)
    assert code == 2 and "already exists" in err
    code, _, err = cli(monkeypatch, capsys, "run", "--resume", run_dir, "--seq-lens", "1k")
    assert code == 2 and "--resume takes the sweep" in err


def test_env(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "env", "--json")
    info = json.loads(out)
    assert code == 0 and info["packages"]["torch"] and "git_commit" in info
