"""Issue 21 item 1: SIGTERM and SIGHUP stop a run as Ctrl-C does, never as a crash."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from fakes import fake, run_cli, scaled

from attnbench import records


class _Killed(Exception):
    """What the test's own handler raises if attnbench left a signal to it."""


@pytest.fixture
def fallback_handlers():
    """A signal attnbench does not take must not kill pytest: it raises _Killed instead."""
    def killed(signum, frame):
        raise _Killed(signum)

    before = {sig: signal.signal(sig, killed) for sig in (signal.SIGTERM, signal.SIGHUP)}
    yield killed
    for sig, handler in before.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_in_a_case_marks_it_abandoned_and_resume_measures_it(
        tmp_path, install, fallback_handlers, sig):
    sent = []

    def killed_once(q, k, v, decay=None):  # the scheduler's signal, in the first 128 case
        if q.shape[2] == 128 and not sent:
            sent.append(sig)
            os.kill(os.getpid(), sig)
        return scaled(1.0)(q, k, v, decay)

    install(fake("fake-killed", killed_once))
    run_dir = tmp_path / "run"
    code, out, err = run_cli("run", "--device", "cpu", "--mechanisms", "fake-killed",
                             "--seq-lens", "64,128,256", "--heads", "2", "--head-dim", "16",
                             "--modes", "fwd", "--out", run_dir, "--no-plot")
    assert sent and code == 128 + sig, err
    name = signal.Signals(sig).name
    assert f"interrupted ({name})" in err and f"--resume {run_dir}" in err
    assert "Traceback" not in out + err
    assert signal.getsignal(sig) is fallback_handlers  # the caller's handler is back
    journal = records.read_journal(run_dir)
    assert journal.unfinished == [] and [r.case.seq_len for r in journal.records] == [64]
    code, out, err = run_cli("run", "--resume", run_dir, "--no-plot")
    assert code == 0, err
    df = records.load(run_dir)
    assert sorted(df["seq_len"]) == [64, 128, 256] and set(df["status"]) == {"ok"}


def test_kill_term_of_a_real_run_then_resume(tmp_path):
    """The issue's reproduction: `attnbench run ... & kill -TERM $!` mid-case, in a process."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "attnbench", "run", "--device", "cpu", "--mechanisms",
         "linear-recurrent", "--seq-lens", "16k", "--heads", "2", "--head-dim", "16",
         "--modes", "fwd", "--max-case-seconds", "600", "--out", str(run_dir), "--no-plot"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = run_dir / "records.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # poll for the started marker
        if journal.is_file() and '"started"' in journal.read_text():
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in out + err
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [next(iter(row)) for row in lines] == ["started", "abandoned"]
    assert records.read_journal(run_dir).unfinished == []
