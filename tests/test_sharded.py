"""attnbench/sharded.py: sweeps over ranks. A real torchrun of 2 CPU processes (gloo, Triton's
interpreter) into one run directory, its resume through ``run --gpus 2``, and the pieces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fakes import make_case

from attnbench import records, sharded
from attnbench.cli import main
from attnbench.errors import UsageError
from attnbench.records import Record

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
SWEEP = ["run", "--device", "cpu", "--mechanisms", "linear-masked,sdpa-math,lightning2-sp",
         "--seq-lens", "66", "--heads", "2", "--head-dim", "16", "--modes", "fwd",
         "--world-sizes", "1,2", "--max-case-seconds", "1000", "--no-plot"]  # all ok, however busy


# Not a deadline on speed (a busy machine may take minutes): a guard against a rank stuck in
# a collective, which would otherwise wait out the harness's 30-minute timeout.
HANG_GUARD_S = 900


def _run(args) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    return subprocess.run(args, capture_output=True, text=True, timeout=HANG_GUARD_S, env=env)


def test_torchrun_sweep_merges_into_one_run_and_resumes(tmp_path):
    out = tmp_path / "run"
    done = _run([*TORCHRUN, "-m", "attnbench", *SWEEP, "--out", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("sharded over 2 rank(s)") == 1  # one display: rank 0's
    df = records.load(out)
    # 2 one-process mechanisms, lightning2-sp on 1 and on 2 ranks: once each
    assert df.attrs["duplicates"] == 0 and len(df) == 4
    assert (df["status"] == "ok").all(), df[["mechanism", "status", "reason"]]
    assert sorted(df["rank"].unique()) == [0, 1]  # the one-process lines were shared
    par = df[df["mechanism"] == "lightning2-sp"]
    assert list(par["world_size"]) == [1, 2] and (par["rank"] == 0).all()
    assert list(par["seq_len_per_rank"]) == [66, 33]
    # one fp32 state per rank forward; nothing sent by one rank alone
    assert list(par["comm_bytes"]) == [0, 1 * 2 * 16 * 16 * 4]
    assert (par["check"] == "pass").all()
    alone = df[df["mechanism"] != "lightning2-sp"]
    assert (alone["world_size"] == 1).all() and alone["comm_bytes"].isna().all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["world_size"] == 2 and [r["rank"] for r in meta["ranks"]] == [0, 1]
    for r in range(2):
        assert (out / records.rank_journal(r)).is_file()
    # resume through the launcher: nothing left, nothing recorded twice
    again = _run([sys.executable, "-m", "attnbench", "run", "--device", "cpu", "--gpus", "2",
                  "--resume", str(out), "--no-plot"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 to run" in again.stdout
    assert len(records.read_journal(out).records) == 4


def _cli(monkeypatch, capsys, *args) -> tuple[int, list[str]]:
    monkeypatch.setattr(sys, "argv", ["attnbench", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


def test_bad_input_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """Refused before any process starts: a length 2 ranks cannot share, more ranks than the
    run has, lightning2-sp with no process group."""
    run = ["run", "--device", "cpu", "--mechanisms", "lightning2-sp", "--no-plot"]
    assert _cli(monkeypatch, capsys, *run, "--gpus", "2", "--seq-lens", "64,65") == (2, [
        "attnbench: error: lightning2-sp splits each sequence over 2 ranks: seq_len 65 is not a "
        "multiple of 2; choose lengths that are"])
    assert _cli(monkeypatch, capsys, *run, "--gpus", "2", "--world-sizes", "2,4") == (2, [
        "attnbench: error: --world-sizes 4: this run has 2 rank(s); start it with at least 4"])
    code, lines = _cli(monkeypatch, capsys, *run, "--seq-lens", "64", "--out",
                       str(tmp_path / "b"))
    assert code == 2 and len(lines) == 1
    assert "lightning2-sp needs torch.distributed: run under torchrun" in lines[0]
    assert not (tmp_path / "b").exists()


def test_deal_keeps_lines_whole_and_balances_by_flops():
    cases = [make_case("linear-masked", seq_len=n, heads=h)
             for h in (1, 2, 4, 8) for n in (64, 128)]
    shares = sharded.deal(cases, 2)
    assert sorted(shares[0] + shares[1], key=cases.index) == cases
    for share in shares:
        heads = {c.heads for c in share}
        assert all(sum(c.heads == h for c in share) == 2 for h in heads)  # whole lines
    # costs 8 : 4 + 2 + 1 -> the heaviest line alone on rank 0
    assert {c.heads for c in shares[0]} == {8} and {c.heads for c in shares[1]} == {1, 2, 4}
    assert [c for c in shares[1]] == [c for c in cases if c.heads != 8]  # the sweep's order


def test_with_world_splits_only_sequence_parallel_cases():
    cases = [make_case("lightning2-sp", seq_len=n) for n in (64, 128)]
    cases.append(make_case("linear-masked", seq_len=63))
    split = sharded.with_world(cases, 4)
    assert [(c.mechanism, c.world_size) for c in split] == [
        ("linear-masked", 1), ("lightning2-sp", 4), ("lightning2-sp", 4)]
    assert split[1].seq_len_per_rank == 16 and split[1].label().endswith("-w4")
    # each world size a line of its own, its lengths in a row
    sizes = sharded.with_world(cases, 4, (1, 2))
    assert [(c.world_size, c.seq_len) for c in sizes[1:]] == [(1, 64), (1, 128), (2, 64),
                                                               (2, 128)]
    with pytest.raises(UsageError, match="seq_len 64, 65 are not a multiple of 3"):
        sharded.with_world([make_case("lightning2-sp", seq_len=n) for n in (65, 63, 64, 65)], 3)


def test_merge_keeps_what_every_rank_recorded(tmp_path):
    """A rank that died inside a case (a started marker, no record) costs the others nothing:
    the merge takes every record of every journal, once."""
    records.write_meta(tmp_path, dict(command="test"))
    recs = [Record(make_case(seq_len=n), "linear", "cpu", "ok", time_ms=1.0, rank=r)
            for r, n in ((0, 64), (1, 128), (1, 256))]
    with records.RunWriter(tmp_path, records.rank_journal(0)) as w:
        w.write(recs[0])
    with records.RunWriter(tmp_path, records.rank_journal(1)) as w:
        w.write(recs[1])
        w.write(recs[2])
        w.started(make_case(seq_len=512), 0.0)  # died here
    assert sharded.merge(tmp_path, 2) == 3
    assert sharded.merge(tmp_path, 2) == 0  # idempotent
    df = records.load(tmp_path)
    assert sorted(df["seq_len"]) == [64, 128, 256] and list(df["rank"]) == [0, 1, 1]
    assert len(sharded.all_records(tmp_path, 2)) == 6  # records.jsonl and both journals


def test_old_records_read_with_defaults(tmp_path):
    row = Record(make_case(), "linear", "cpu", "ok", time_ms=1.0).row()
    for key in ("world_size", "rank", "device_index", "seq_len_per_rank", "comm_bytes"):
        row.pop(key)
    rec = Record.from_row(row)
    assert rec.case.world_size == 1 and rec.rank == 0 and rec.device_index == -1
    assert "-w" not in rec.case.label()
    assert pd.isna(rec.comm_bytes)


def _kinds_worker(rank, init_file, out_dir):
    import pickle

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        sharded.init("cpu" if rank == 0 else "cuda")
        said = ""
    except UsageError as exc:
        said = str(exc)
    Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(said))
    dist.destroy_process_group()


def test_ranks_on_different_kinds_of_device(tmp_path):
    import pickle

    import torch.multiprocessing as mp

    mp.start_processes(_kinds_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                       join=True, start_method="spawn")
    for r in range(2):
        said = pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes())
        assert said == ("the ranks run on different kinds of device (rank 0 cpu, rank 1 cuda); "
                        "give every rank the same --device")


def test_sweeps_take_sequence_parallel_mechanisms_only_by_name():
    from attnbench import registry

    for device in ("cpu", "cuda"):
        for selection in ("all", "linear", "softmax"):
            names = {m.name for m in registry.select(selection, device)}
            assert not names & {"lightning2-sp", "sdpa-ring"}, (selection, device)
    assert [m.name for m in registry.select("lightning2-sp", "cpu")] == ["lightning2-sp"]
    assert "lightning2-sp" in {m.name for m in registry.select("linear", None)}  # --gate
