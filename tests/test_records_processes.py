"""The journal against real processes: a second writer, a run killed inside a case, a resume
after a torn last line. Each ends with exactly one record per case and every view working."""

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from test_cli import cli

from attnbench import records

TESTS = Path(__file__).parent

# A child process: the CLI with one fake mechanism registered in it, whose call hangs at
# seq_len 128 (the correctness check runs at another length, so only the measured case hangs).
CHILD = """
import sys, time
from fakes import fake, scaled
from attnbench import registry

def stuck_at_128(q, k, v, decay=None):
    if q.shape[2] == 128:
        time.sleep(600)
    return scaled(1.0)(q, k, v, decay)

mech = fake("fake-stuck", stuck_at_128)
registry.MECHANISMS = registry.MECHANISMS + (mech,)
registry._BY_NAME = {m.name: m for m in registry.MECHANISMS}

from attnbench.cli import main
sys.argv = ["attnbench", *sys.argv[1:]]
main()
"""
SWEEP = ["run", "--device", "cpu", "--mechanisms", "fake-stuck", "--seq-lens", "64,128,256",
         "--heads", "2", "--head-dim", "16", "--modes", "fwd", "--no-plot"]


def child(*args, cwd: Path) -> subprocess.Popen:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, COLUMNS="200")
    return subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    """Wait for a child that ends by itself, however long a busy machine makes it take (one
    that ran into the hanging case would end after its 600 s sleep, and fail the test)."""
    out, err = proc.communicate()
    return proc.returncode, out, err


def wait_for_started(run_dir: Path, seq_len: int, proc: subprocess.Popen):
    """Until the journal holds a started marker for ``seq_len`` (the child is in that case):
    no deadline, the child either gets there or ends (its sweep has no other way out)."""
    path = run_dir / records.JSONL_FILE
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the child ended before the case at {seq_len}: {finish(proc)}")
        if path.is_file():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if "started" in row and row["started"]["seq_len"] == seq_len:
                    return
        time.sleep(0.2)


def records_per_case(run_dir: Path) -> collections.Counter:
    journal = records.read_journal(run_dir)
    assert journal.problems == []
    return collections.Counter(r.case.seq_len for r in journal.records)


def test_a_second_writer_is_refused_and_a_killed_case_is_recorded_on_resume(monkeypatch, capsys,
                                                                            tmp_path):
    run_dir = tmp_path / "run"
    first = child(*SWEEP, "--out", run_dir, cwd=tmp_path)
    try:
        wait_for_started(run_dir, 128, first)

        # Issue 12 item 2: a second process on the same directory gets one line and exit 2.
        code, out, err = finish(child("run", "--resume", run_dir, "--no-plot", cwd=tmp_path))
        assert code == 2, (out, err)
        assert f"is being written by attnbench pid {first.pid}" in " ".join(err.split())
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    finally:
        # Item 4: the system kills the run inside a case (as the OOM killer would).
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    assert (run_dir / records.LOCK_FILE).read_text().startswith(f"attnbench pid {first.pid}")

    # The lock died with its process; the resume takes it over, records the case it died in,
    # and moves on (the hanging case is not tried again, so this finishes).
    code, out, err = finish(child("run", "--resume", run_dir, "--no-plot", cwd=tmp_path))
    assert code == 0, (out, err)
    assert records_per_case(run_dir) == {64: 1, 128: 1, 256: 1}
    df = pd.read_parquet(run_dir / records.PARQUET_FILE).set_index("seq_len")
    assert df.loc[64, "status"] == df.loc[256, "status"] == "ok"
    assert df.loc[128, "status"] == "error" and "process killed" in df.loc[128, "reason"]

    # Every view reads the run (in this process, where fake-stuck is not registered).
    for args in (["report", run_dir], ["plot", run_dir, "--out", tmp_path / "figs"],
                 ["export", run_dir], ["compare", run_dir, run_dir]):
        code, out, err = cli(monkeypatch, capsys, *args)
        assert code == 0 and "Traceback" not in out + err and "damaged" not in err, (args, err)
    assert "fake-stuck fwd error at 128: process killed" in " ".join(
        cli(monkeypatch, capsys, "report", run_dir)[1].split())


def test_resume_after_a_torn_last_line_keeps_exactly_one_record_per_case(monkeypatch, capsys,
                                                                         tmp_path):
    """Issue 12 item 1: the resumed record used to be appended onto the fragment."""
    run_dir = tmp_path / "run"
    args = ["run", "--device", "cpu", "--mechanisms", "linear-masked", "--seq-lens", "64,128",
            "--heads", "2", "--head-dim", "16", "--modes", "fwd", "--no-plot"]
    assert cli(monkeypatch, capsys, *args, "--out", run_dir)[0] == 0
    path = run_dir / records.JSONL_FILE
    data = path.read_bytes()
    path.write_bytes(data[:-150])  # `truncate -s -150`: the last record, cut mid-line
    fragment = data[:-150].rsplit(b"\n", 1)[1]

    code, out, err = cli(monkeypatch, capsys, "run", "--resume", run_dir, "--no-plot")
    assert code == 0 and "(1 to run)" in out and "1 ok" in out
    assert f"moved to {records.TORN_FILE}" in " ".join(err.split())
    assert (run_dir / records.TORN_FILE).read_bytes() == fragment + b"\n"
    assert path.read_bytes().endswith(b"\n")
    assert records_per_case(run_dir) == {64: 1, 128: 1}
    df = pd.read_parquet(run_dir / records.PARQUET_FILE)
    assert sorted(df["seq_len"]) == [64, 128] and set(df["status"]) == {"ok"}
    code, out, err = cli(monkeypatch, capsys, "report", run_dir, "--strict")
    assert code == 0 and err == ""
