"""attnbench export: github-action-benchmark (customBiggerIsBetter) and Bencher (BMF) JSON."""

import json
import math
import sys

import pytest
from fakes import make_case, make_run

from attnbench import cli, export, records
from attnbench.records import Record

NAN = math.nan


def rec(mech="linear-masked", mode="fwd", n=1024, t=2.0, status="ok", mem=NAN, check="pass",
        p20=1.6, p80=2.5, decay=True) -> Record:
    case = make_case(mech, mode, 2, 4, n, 32, dtype="bf16", decay=decay)
    if status != "ok":
        return Record(case, "linear", "cuda", status, reason="out of memory")
    return Record(case, "linear", "cuda", "ok", time_ms=t, time_ms_p20=p20,
                           time_ms_p80=p80, reps=30, tokens_per_s=2 * n / (t / 1e3),
                           tflops=12.5, peak_mem_mib=mem + 10, extra_mem_mib=mem, check=check,
                           impl="triton")


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "run", [
        rec(n=1024, mem=64.0),
        rec(n=2048, mode="bwd", decay=False),
        rec(n=4096, status="oom"),
        rec(n=8192, check="fail"),
        rec(n=512, p20=NAN, p80=NAN),
    ])


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["attnbench", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def test_bench_name():
    row = dict(mechanism="lightning2", mode="fwd", batch=2, heads=16, seq_len=4096,
               head_dim=128, dtype="bf16", decay=True)
    assert export.bench_name(row) == "attnbench/lightning2/fwd/b2-h16-n4096-d128-bf16-decay"


def test_github_action_benchmark(run_dir):
    text, dropped = export.export(records.load(run_dir), "github-action-benchmark")
    data = json.loads(text)
    assert dropped == 1  # the failed correctness check; the oom is not "ok" to begin with
    assert isinstance(data, list) and len(data) == 3
    by_name = {d["name"]: d for d in data}
    e = by_name["attnbench/linear-masked/fwd/b2-h4-n1024-d32-bf16-decay"]
    assert e["unit"] == "tokens/s"
    assert e["value"] == pytest.approx(2 * 1024 / 2e-3)
    # tokens/s at p20 and p80: 2048/1.6e-3 and 2048/2.5e-3; half the difference
    assert e["range"] == f"± {(2048 / 1.6e-3 - 2048 / 2.5e-3) / 2:.4g}"
    assert "12.5 TFLOP/s" in e["extra"] and "64.0 MiB above inputs" in e["extra"]
    assert "impl triton" in e["extra"]
    assert "attnbench/linear-masked/bwd/b2-h4-n2048-d32-bf16" in by_name
    no_spread = by_name["attnbench/linear-masked/fwd/b2-h4-n512-d32-bf16-decay"]
    assert "range" not in no_spread
    for e in data:
        assert set(e) <= {"name", "unit", "value", "range", "extra"}
        assert isinstance(e["value"], float) and isinstance(e.get("range", ""), str)


def test_bencher(run_dir):
    text, _ = export.export(records.load(run_dir), "bencher")
    data = json.loads(text)
    assert len(data) == 3
    m = data["attnbench/linear-masked/fwd/b2-h4-n1024-d32-bf16-decay"]
    assert m["throughput"]["value"] == pytest.approx(2048 / 2e-3)
    assert m["throughput"]["lower_value"] == pytest.approx(2048 / 2.5e-3)
    assert m["throughput"]["upper_value"] == pytest.approx(2048 / 1.6e-3)
    assert m["latency"] == pytest.approx(dict(value=2e6, lower_value=1.6e6, upper_value=2.5e6))
    assert m["tflops"] == {"value": 12.5}
    assert m["extra-memory-mib"] == {"value": 64.0}
    no_mem = data["attnbench/linear-masked/bwd/b2-h4-n2048-d32-bf16"]
    assert "extra-memory-mib" not in no_mem
    no_spread = data["attnbench/linear-masked/fwd/b2-h4-n512-d32-bf16-decay"]
    assert set(no_spread["throughput"]) == {"value"}
    for measures in data.values():  # the BMF schema: every measure has a numeric value
        for metric in measures.values():
            assert set(metric) <= {"value", "lower_value", "upper_value"}
            assert all(isinstance(v, float) and math.isfinite(v) for v in metric.values())


def test_cli_stdout_and_out_file(run_dir, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "export", run_dir, "--format", "bencher")
    assert code == 0 and len(json.loads(out)) == 3
    assert "left out 1" in err
    target = tmp_path / "gab.json"
    code, out, _ = run_cli(monkeypatch, capsys, "export", run_dir, "--out", target)
    assert code == 0 and out == ""
    assert len(json.loads(target.read_text())) == 3


@pytest.mark.parametrize("problem", ["format", "nothing-ok", "missing-dir"])
def test_cli_bad_input_exits_2(tmp_path, monkeypatch, capsys, problem):
    run = make_run(tmp_path / "r", [rec(status="oom")] if problem == "nothing-ok" else [rec()])
    args = {"format": [run, "--format", "csv"], "nothing-ok": [run],
            "missing-dir": [tmp_path / "nope"]}[problem]
    code, out, err = run_cli(monkeypatch, capsys, "export", *args)
    assert code == 2 and out == "" and err.startswith("attnbench: error: ")
