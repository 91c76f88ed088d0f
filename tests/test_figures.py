"""The paper's figures from a run: panels drawn, OOM marked, findings computed from the data.

The run here is a SYNTHETIC fixture written in tmp_path by ``make_paper_run``: plausible
shapes of curves (linear kernels linear in n, softmax and the masked form quadratic, OOM
where the memory model passes 80 GiB), labelled as synthetic in its meta.json; no number in
it is a measurement, and nothing is written under results/.
"""

import math

import numpy as np
import pandas as pd
import pytest

from attnbench import figures, records
from attnbench.records import Record, RecordWriter
from attnbench.spec import Case

B, H, D = 4, 32, 128
LENGTHS = [1024 * 2**i for i in range(8)]  # 1k..128k
GPU_MIB = 80 * 1024
QKV_MIB = B * H * D * 2 / 2**20  # one (B, H, n, D) bf16 tensor, MiB per token


def _model(mech: str, mode: str, n: int, flash_scale: float) -> tuple[float, float]:
    """Synthetic (ms, peak MiB) for one case: shapes of curves only, not measurements."""
    x = n / 1024
    bwd = 2.5 if mode == "bwd" else 1.0
    io = (4 if mode == "fwd" else 8) * QKV_MIB * n
    ms, mem = {
        "lightning2": (0.55 * x + 0.1, io + 1),
        "lightning1": (0.05 * x * x + 0.3 * x, io + 1),
        "flash2": (flash_scale * (0.15 * x * x + 0.05 * x), io + 2),
        "linear-masked": (0.3 * x * x, io + B * H * n * n * 4 / 2**20),
        "linear-cumsum": (2.8 * x, io + B * H * n * D * D * 2 / 2**20),
        "xformers": (0.25 * x * x + 0.1 * x, io + 2),
    }[mech]
    return ms * bwd, mem


def make_paper_run(run_dir, mechanisms=("lightning2", "lightning1", "flash2", "linear-masked",
                                         "linear-cumsum"), flash_scale=1.0, fail_check=None,
                   skip_from=None):
    """A synthetic run of the paper preset's shape in ``run_dir`` (written like the runner:
    once a mechanism runs out of memory, longer lengths are recorded as oom)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    records.write_meta(run_dir, {
        "command": "SYNTHETIC test fixture (tests/test_figures.py), not a measurement",
        "synthetic": True,
        "environment": {"gpu": "SYNTHETIC fixture, not a measurement"},
    })
    with RecordWriter(run_dir) as w:
        for mech in mechanisms:
            family = "softmax" if mech in ("flash2", "xformers") else "linear"
            decay = mech in ("lightning2", "lightning1", "linear-masked")
            for mode in ("fwd", "bwd"):
                oom = False
                for n in LENGTHS:
                    case = Case(mech, mode, B, H, n, D, "bf16", decay)
                    ms, mem = _model(mech, mode, n, flash_scale)
                    oom = oom or mem > GPU_MIB
                    if oom:
                        w.write(Record.for_case(case, family, "cuda", "oom",
                                                reason="CUDA out of memory"))
                        continue
                    if skip_from and mech == skip_from[0] and n >= skip_from[1]:
                        w.write(Record.for_case(case, family, "cuda", "skipped", time_ms=ms,
                                                reason="predicted 40 s > --max-case-seconds"))
                        continue
                    check = "fail" if fail_check == (mech, mode) else "pass"
                    w.write(Record.for_case(
                        case, family, "cuda", "ok", time_ms=ms, time_ms_p20=0.98 * ms,
                        time_ms_p80=1.03 * ms, reps=100, tokens_per_s=B * n / (ms / 1e3),
                        peak_mem_mib=mem, extra_mem_mib=mem - 3 * QKV_MIB * n, check=check))
    return run_dir


@pytest.fixture
def paper_df(tmp_path):
    return records.load(make_paper_run(tmp_path / "run"))


def _lines(ax) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines()}


def _oom_xs(ax) -> list[float]:
    """x positions of the OOM marks (scatter collections placed at the top edge)."""
    xs = []
    for coll in ax.collections:
        offsets = coll.get_offsets()
        if len(offsets) and np.allclose(np.asarray(offsets)[:, 1], 0.97):
            xs.extend(np.asarray(offsets)[:, 0].tolist())
    return xs


def test_paper_kernels_four_panels_all_mechanisms(paper_df):
    fig = figures.paper_kernels(paper_df)
    axes = fig.axes
    assert len(axes) == 4
    titles = [ax.get_title() for ax in axes]
    assert titles == ["forward: runtime (ms)", "backward: runtime (ms)",
                      "forward: peak memory (MiB)", "backward: peak memory (MiB)"]
    for ax in axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()][:2] == ["1k", "2k"]
        assert "128k" in [t.get_text() for t in ax.get_xticklabels()]
        assert set(_lines(ax)) == {figures.name(m) for m in figures.PAPER_MECHANISMS}
    # the legend lists every mechanism and the OOM mark, outside the panels
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()][:5] == [
        figures.name(m) for m in figures.PAPER_MECHANISMS]
    assert "out of memory" in legend.get_texts()[-1].get_text()
    assert "SYNTHETIC" not in fig._suptitle.get_text()  # title only from the caller


def test_oom_marked_at_the_top_edge(paper_df):
    fig = figures.paper_kernels(paper_df)
    fwd_time = fig.axes[0]
    # cumsum: 4 GiB of prefix states per 1k tokens -> over 80 GiB from 32k; masked from 16k
    cumsum = paper_df.query("mechanism == 'linear-cumsum' and mode == 'fwd' and status == 'oom'")
    masked = paper_df.query("mechanism == 'linear-masked' and mode == 'fwd' and status == 'oom'")
    assert sorted(_oom_xs(fwd_time)) == sorted(cumsum["seq_len"].tolist()
                                               + masked["seq_len"].tolist())
    assert min(cumsum["seq_len"]) == 32768
    line = _lines(fwd_time)[figures.name("linear-cumsum")]
    assert max(line.get_xdata()) == 16384  # the line stops where memory ran out


def test_absent_mechanism_left_out_and_named(tmp_path):
    df = records.load(make_paper_run(tmp_path, mechanisms=("lightning2", "lightning1")))
    fig = figures.paper_kernels(df)
    title = fig._suptitle.get_text()
    assert "not in this run: FlashAttention-2 (flash2)" in title
    for ax in fig.axes:
        assert set(_lines(ax)) == {figures.name("lightning2"), figures.name("lightning1")}
    found = figures.findings(df)
    assert found[0].startswith("Not in this run, so not compared: FlashAttention-2 (flash2)")
    assert not any("overtakes FlashAttention-2" in s for s in found)
    assert any("Lightning-2 overtakes Lightning-1 in forward" in s for s in found)


def test_nothing_of_the_paper_in_the_run(tmp_path):
    df = records.load(make_paper_run(tmp_path, mechanisms=("xformers",)))
    fig = figures.paper_kernels(df)
    assert all(not ax.get_lines() for ax in fig.axes)
    assert all("no fwd records" in t.get_text() or "no bwd records" in t.get_text()
               for ax in fig.axes for t in ax.texts)
    assert len(figures.findings(df)) == 1  # only the sentence naming what is missing
    assert len(figures.tokens_per_second(df).axes) == 2


def test_findings_computed_from_the_data(paper_df, tmp_path):
    found = figures.findings(paper_df)
    text = "\n".join(found)
    # t_l2 = 0.55x + 0.1, t_fa = 0.15x^2 + 0.05x (x = n/1k): equal at x = 3.5
    assert "Lightning-2 overtakes FlashAttention-2 in forward between 2k and 4k" in text
    assert "Lightning-2 overtakes FlashAttention-2 in backward between 2k and 4k" in text
    assert "Lightning-2 forward tokens/s stays within" in text
    assert "naive cumsum runs out of memory in forward from 32k (longest measured: 16k)." in found
    assert "Vanilla runs out of memory in forward from 16k (longest measured: 8k)." in found
    growth = next(s for s in found if s.startswith("Forward runtime against length"))
    assert "Lightning-2 n^1.0 over 4k..128k" in growth and "Vanilla n^2.0 over 4k..8k" in growth
    # sentences are grouped by the figure's panels; memory limits sit with the memory panels
    panels = figures.findings_by_panel(paper_df)
    assert list(panels) == ["run", "forward runtime", "backward runtime", "forward memory",
                            "backward memory"]
    assert any("overtakes FlashAttention-2" in s for s in panels["backward runtime"])
    assert any("runs out of memory" in s for s in panels["forward memory"])
    mem = paper_df.query("mechanism == 'lightning2' and mode == 'bwd' and seq_len == 131072")
    assert f"Lightning-2 {mem['peak_mem_mib'].item():,.0f} MiB" in next(
        s for s in panels["backward memory"] if s.startswith("Backward peak memory at 128k"))
    # the number in the flatness sentence is the data's own
    l2 = paper_df.query("mechanism == 'lightning2' and mode == 'fwd' and seq_len >= 4096")
    spread = 100 * (1 - l2["tokens_per_s"].min() / l2["tokens_per_s"].max())
    assert f"stays within {spread:.0f}% of its best from 4k to 128k" in text

    # a FlashAttention-2 4x faster moves the crossing
    slower = records.load(make_paper_run(tmp_path / "fast", flash_scale=0.25))
    moved = "\n".join(figures.findings(slower))
    assert "Lightning-2 overtakes FlashAttention-2 in forward between 8k and 16k" in moved
    assert moved != text


def test_findings_name_skips_and_failed_checks(tmp_path):
    df = records.load(make_paper_run(tmp_path, fail_check=("lightning1", "bwd"),
                                     skip_from=("lightning1", 65536)))
    found = figures.findings(df)
    assert any(s.startswith("Lightning-1 forward has no measurement from 64k (longest "
                            "measured: 32k), status skipped: predicted 40 s") for s in found)
    assert any(s.startswith("Lightning-1 failed its correctness check in backward at 1k, 2k")
               for s in found)
    fig = figures.paper_kernels(df)
    assert ("not measured (not OOM): Lightning-1 fwd from 64k: skipped; Lightning-1 bwd from "
            "64k: skipped") in fig._suptitle.get_text()
    line = _lines(fig.axes[1])[figures.name("lightning1") + " (failed check)"]
    assert line.get_linestyle() == "--"


def test_cpu_run_has_no_memory_panels_to_fill(tmp_path):
    make_paper_run(tmp_path)
    rows = records.read_jsonl(tmp_path)
    for r in rows:
        r.update(device="cpu", peak_mem_mib=None, extra_mem_mib=None)
    df = records.to_frame(rows)
    fig = figures.paper_kernels(df)
    assert [t.get_text() for t in fig.axes[2].texts] == ["memory is not measured on the CPU"]
    assert fig.axes[2].get_xlim() == fig.axes[0].get_xlim()  # an empty panel keeps its axis
    assert fig.axes[0].get_lines()


def test_tokens_per_second_every_mechanism(tmp_path):
    mechs = ("lightning2", "flash2", "xformers", "linear-cumsum")
    df = records.load(make_paper_run(tmp_path, mechanisms=mechs))
    fig = figures.tokens_per_second(df)
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["forward", "backward"]
    for ax in fig.axes:
        assert set(_lines(ax)) == {figures.name(m) for m in mechs}
        assert ax.get_yticklabels()  # labelled ticks such as 10M


def test_official_comparison_ratios(tmp_path):
    mechs = ("lightning2", "flash2", "xformers", "lightning1")
    df = records.load(make_paper_run(tmp_path, mechanisms=mechs))
    # a second shape of the same mechanisms must not leak into the comparison
    other = df.assign(heads=16, time_ms=df["time_ms"] * 100)
    table, fig = figures.official_comparison(pd.concat([df, other], ignore_index=True))
    official = figures.official_operator_ms()
    assert len(table) == len(official)  # every published row, once
    assert set(table["mechanism"]) == {"lightning2", "flash2", "xformers"}
    row = table.query("mechanism == 'flash2' and mode == 'fwd' and seq_len == 4096").iloc[0]
    ours = df.query("mechanism == 'flash2' and mode == 'fwd' and seq_len == 4096")["time_ms"]
    assert row["official_ms"] == 2.740 and row["ours_ms"] == pytest.approx(ours.item())
    assert row["ratio"] == pytest.approx(ours.item() / 2.740)
    short = table[table["seq_len"] == 512]  # the published table starts at 512; we at 1k
    assert short["ours_ms"].isna().all() and (short["ours_status"] == "not in run").all()
    assert short["ratio"].isna().all()
    assert len(fig.axes) == 3
    summary = figures.official_summary(table)
    fwd = table.query("mechanism == 'flash2' and mode == 'fwd'")["ratio"].dropna()
    assert summary[0] == (f"FlashAttention-2 forward: ours / official is {fwd.min():.2f}.."
                          f"{fwd.max():.2f} (median {fwd.median():.2f}) over 6 lengths (1k..32k).")
    assert len(summary) == 6  # three mechanisms, two modes, none missing


def test_official_comparison_without_the_shape(tmp_path):
    df = records.load(make_paper_run(tmp_path, mechanisms=("lightning2",)))
    table, fig = figures.official_comparison(df.assign(batch=1))
    assert table["ratio"].isna().all() and (table["ours_status"] == "not in run").all()
    assert "no measurement of ours" in fig.axes[2].texts[0].get_text()
    assert ("ours not in this run (their line only): FlashAttention-2 (flash2), Lightning-2 "
            "(lightning2), xformers") in fig._suptitle.get_text()
    assert figures.official_summary(table) == [
        "No measurement of ours to set beside theirs for: FlashAttention-2, Lightning-2, "
        "xformers."]


def test_resolve_run_dir(tmp_path, monkeypatch):
    root = figures.repo_root()
    assert (root / "pyproject.toml").is_file()
    monkeypatch.delenv("ATTNBENCH_RUN_DIR", raising=False)
    assert figures.resolve_run_dir("results/x", start=root / "notebooks") == root / "results/x"
    monkeypatch.setenv("ATTNBENCH_RUN_DIR", str(tmp_path))
    assert figures.resolve_run_dir("results/x") == tmp_path


@pytest.mark.parametrize("figure, stem", [("paper-kernels", "paper-kernels"),
                                          ("tokens", "tokens-per-second"),
                                          ("official", "official-comparison")])
def test_cli_plot_figure(tmp_path, monkeypatch, capsys, figure, stem):
    from test_cli import cli

    run = make_paper_run(tmp_path / "run")
    out = tmp_path / "figs"
    code, printed, err = cli(monkeypatch, capsys, "plot", run, "--figure", figure, "--out", out)
    assert code == 0, err
    for suffix in ("png", "svg"):
        assert (out / f"{stem}.{suffix}").stat().st_size > 1000
    if figure == "paper-kernels":
        assert "overtakes" in printed


def test_cli_plot_unknown_figure(tmp_path, monkeypatch, capsys):
    from test_cli import cli

    code, _, err = cli(monkeypatch, capsys, "plot", make_paper_run(tmp_path), "--figure", "fig9")
    assert code == 2 and "unknown figure 'fig9'" in err


def test_no_nan_in_the_fixture_lines(paper_df):
    ok = paper_df[paper_df["status"] == "ok"]
    assert not ok[["time_ms", "tokens_per_s", "peak_mem_mib"]].isna().any().any()
    assert all(math.isfinite(v) for v in ok["time_ms"])
