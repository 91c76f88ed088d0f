"""Issue 21 item 5: sharded runs as a hostile user meets them (real torchrun of 2 CPU ranks)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from fakes import run_cli

from attnbench import records, sharded

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
SWEEP = ["run", "--device", "cpu", "--mechanisms", "linear-masked,sdpa-math,lightning2-sp",
         "--heads", "2", "--head-dim", "16", "--modes", "fwd", "--max-case-seconds", "20",
         "--no-plot"]


def _torchrun(args, timeout=180) -> subprocess.CompletedProcess:
    """torchrun as a user types it: no TRITON_INTERPRET, no RANK of the test's own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                        "TORCHELASTIC_RUN_ID")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([*TORCHRUN, "-m", "attnbench", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_lightning2_sp_on_cpu_ranks_needs_no_triton_interpret_and_the_summary_counts_all(
        tmp_path):
    out = tmp_path / "run"
    done = _torchrun([*SWEEP, "--seq-lens", "64", "--out", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    df = records.load(out)
    assert len(df) == 3 and (df["status"] == "ok").all(), df[["mechanism", "reason"]]
    assert sorted(df["rank"].unique()) == [0, 1]  # rank 1 measured one of them
    assert "finished in" in done.stdout and ": 3 ok" in done.stdout  # every rank's records


def test_a_length_the_ranks_cannot_share_is_one_line_from_rank_0(tmp_path):
    done = _torchrun([*SWEEP, "--seq-lens", "65", "--out", str(tmp_path / "run")])
    text = done.stdout + done.stderr
    assert text.count("attnbench: error:") == 1
    assert "seq_len 65 is not a multiple of 2" in text
    assert "SIGABRT" not in text and "Fatal Python error" not in text
    root = text[text.index("Root Cause"):]
    assert "rank      : 0" in root and "exitcode  : 2" in root  # rank 0 said it, and left first
    assert not (tmp_path / "run").exists()


def test_gpus_beyond_the_cores_of_a_cpu_run_is_refused(tmp_path):
    n = sharded.cpu_cores() + 1
    code, out, err = run_cli("run", "--device", "cpu", "--gpus", str(n), "--mechanisms",
                             "linear-masked", "--out", tmp_path / "run")
    assert code == 2 and err.startswith("attnbench: error: ") and "Traceback" not in err
    assert f"--gpus {n} on the CPU starts {n} processes" in err
    assert not (tmp_path / "run").exists()


def test_gpus_on_the_cpu_says_it_starts_cpu_processes(tmp_path, monkeypatch):
    import torch.distributed.run as launcher

    started = []
    monkeypatch.setattr(launcher, "run", started.append)  # no ranks started in the test
    code, out, err = run_cli("run", "--device", "cpu", "--gpus", "1", "--mechanisms",
                             "linear-masked", "--out", tmp_path / "run")
    assert code == 0 and len(started) == 1, err
    assert "No GPU in use: --gpus 1 starts 1 CPU process(es)" in " ".join(out.split())


@pytest.mark.parametrize("env", [dict(RANK="1", WORLD_SIZE="2", MASTER_ADDR="h"), {}])
def test_settle_outside_a_group_does_nothing(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sharded.settle()  # returns at once: no group joined
