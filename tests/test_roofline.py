"""The roofline: shares of measured peaks, the report and the figure, and runs without peaks."""

import math
from pathlib import Path

import pytest
from fakes import make_case, run_cli

from attnbench import peaks, roofline
from attnbench.records import Record, load, read_meta
from attnbench.spec import build_spec

PAPER_V2 = Path(__file__).resolve().parent.parent / "results" / "h100-paper-v2"


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    from attnbench.runner import run_sweep

    spec = build_spec("cpu", "cpu", mechanisms="linear-masked", seq_lens="64,128", heads="2",
                      head_dims="16", modes="fwd")
    return run_sweep(spec, tmp_path_factory.mktemp("roofline") / "run").run_dir


def test_peaks_are_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = peaks.device_peaks("cpu")
    assert first["bandwidth_gbps"] > 0 and first["matmul_tflops"] > 0
    assert first["device"] == peaks.device_name("cpu")
    monkeypatch.setattr(peaks, "measure", lambda device: pytest.fail("measured twice"))
    assert peaks.device_peaks("cpu") == first
    assert (tmp_path / "attnbench" / peaks.CACHE_NAME).is_file()


def test_a_failed_measurement_is_said_not_invented(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def boom(device):
        raise RuntimeError("CUDA out of memory\nmore")

    monkeypatch.setattr(peaks, "measure", boom)
    got = peaks.device_peaks("cpu")
    assert got["error"] == "RuntimeError: CUDA out of memory" and "bandwidth_gbps" not in got
    assert roofline.peaks_of({"peaks": got}) is None
    assert "measuring them failed" in roofline.peaks_line({"peaks": got})


def test_shares_of_the_roofs():
    case = make_case("lightning2", batch=1, heads=2, seq_len=8, head_dim=4, value_dim=6,
                     dtype="bf16")  # 1536 FLOP, 640 B: 2.4 FLOP/byte
    rec = Record(case, "linear", "cuda", "ok", time_ms=1e-6, tflops=1536 / 1e-9 / 1e12,
                 gbps=640 / 1e-9 / 1e9)  # 1.536 TFLOP/s, 640 GB/s
    meta = {"peaks": {"bandwidth_gbps": 1000.0, "matmul_tflops": 10.0}}
    from attnbench.records import to_frame

    rf = roofline.roofline_frame(to_frame([rec]), meta)
    r = rf.iloc[0]
    assert r["intensity"] == pytest.approx(2.4)
    assert r["bw_share"] == pytest.approx(0.64) and r["compute_share"] == pytest.approx(0.1536)
    assert r["roof_share"] == pytest.approx(0.64)  # the bandwidth roof is the lower at 2.4
    line = roofline.findings(rf, meta)[1]
    assert "64% of its roof (bandwidth-bound" in line
    no_peaks = roofline.roofline_frame(to_frame([rec]), {})
    assert math.isnan(no_peaks["bw_share"].iloc[0])
    old = Record(case, "linear", "cuda", "ok", time_ms=1e-6, tflops=1.536)  # no gbps stored
    assert roofline.roofline_frame(to_frame([old]), meta)["gbps"].iloc[0] == pytest.approx(640)


def test_decode_calls_are_placed_by_their_byte_model(tmp_path):
    """A decode step: lightning2's state read and written (0.5 FLOP per byte whatever the
    context), softmax's KV cache read once (1 FLOP per byte in bf16); a record without GB/s
    gets them from the decode models; the figure draws a decode panel."""
    from attnbench.records import to_frame

    lin = make_case("lightning2", "decode", batch=32, heads=32, seq_len=1 << 20, head_dim=128,
                    dtype="bf16")
    soft = make_case("sdpa-flash", "decode", batch=32, heads=32, seq_len=1 << 15, head_dim=128,
                     dtype="bf16", decay=False)
    recs = [Record(lin, "linear", "cuda", "ok", time_ms=0.05, tflops=0.01),
            Record(soft, "softmax", "cuda", "ok", time_ms=2.0, tflops=1.0)]
    meta = {"peaks": {"bandwidth_gbps": 3000.0, "matmul_tflops": 700.0}}
    rf = roofline.roofline_frame(to_frame(recs), meta)
    state_bytes = 2 * 32 * 32 * 128 * 128 * 4 + 2 * 32 * 32 * 512
    assert rf["gbps"].iloc[0] == pytest.approx(state_bytes / 0.05e-3 / 1e9)
    assert rf["gbps"].iloc[1] > 2 * 32 * 32 * 2**15 * 128 * 2 / 2e-3 / 1e9
    assert any(line.startswith("decode lightning2 at 1m") for line in roofline.findings(rf, meta))
    fig = roofline.roofline_figure(rf, meta)
    assert [ax.get_title() for ax in fig.get_axes()] == ["decode"]


def test_report_and_figure_of_a_cpu_run(cpu_run, tmp_path):
    meta = read_meta(cpu_run)
    assert roofline.peaks_of(meta) is not None
    assert (load(cpu_run)["gbps"] > 0).all()
    code, out, err = run_cli("report", cpu_run, "--roofline")
    assert code == 0, err
    assert "fwd: GB/s (byte model)" in out and "fwd: % of peak bandwidth" in out
    assert "fwd: % of peak matmul" in out
    assert "measured peaks of cpu" in out and "of its roof" in out
    code, out, err = run_cli("plot", cpu_run, "--figure", "roofline", "--format", "png",
                             "--out", tmp_path)
    assert code == 0, err
    assert (tmp_path / "roofline.png").stat().st_size > 10_000
    assert "fwd linear-masked at 128" in out


def test_report_and_figure_of_a_run_without_peaks(tmp_path):
    """results/h100-paper-v2 predates peaks and the byte model: GB/s from today's model, the
    missing peaks said, no roof drawn."""
    code, out, err = run_cli("report", PAPER_V2, "--roofline")
    assert code == 0, err
    assert "no measured peaks in this run's meta.json" in out
    assert "fwd: GB/s (byte model)" in out and "% of peak bandwidth" not in out
    assert "records predate the byte model" in out
    assert "fwd lightning2 at 128k: 64 FLOP/byte" in out
    code, out, err = run_cli("plot", PAPER_V2, "--figure", "roofline", "--format", "png",
                             "--out", tmp_path)
    assert code == 0, err
    assert (tmp_path / "roofline.png").is_file()
    assert "- no measured peaks" in out


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    code, _, err = run_cli("plot", tmp_path / "nosuch", "--figure", "roofline")
    assert code == 2 and err.startswith("attnbench: error:") and err.strip().count("\n") == 0
    code, _, err = run_cli("report", tmp_path / "nosuch", "--roofline")
    assert code == 2 and "does not exist" in err
