"""attnbench tgs: training steps of whole models as mode ``train`` of the same sweep.

One tiny CPU run (both models, two lengths) is made once for the module by the command line and
read back by every view: report, plot, compare, export and --resume. Bad input is refused with
one line and exit 2 before any work.
"""

import json
import shutil
from pathlib import Path

import pytest
from fakes import fake, oom_from, run_cli

from attnbench import records
from attnbench.models import config_for, train_flops_per_token
from attnbench.runner import run_sweep
from attnbench.spec import build_train_spec, expand

# Not a deadline on speed (cells take seconds; a busy machine may take far longer): a
# guard against a kernel that hangs.
HANG_GUARD_S = 600

TINY = ["tgs", "--device", "cpu", "--size", "tiny", "--seq-lens", "64,128",
        "--max-case-seconds", "1000"]  # every length measured, however busy the machine


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The CPU run a new user makes: ``attnbench tgs --size tiny`` (two lengths here)."""
    run_dir = tmp_path_factory.mktemp("tgs") / "tiny"
    code, out, err = run_cli(*TINY, "--out", run_dir)
    return run_dir, code, out, err


def test_tgs_writes_records_the_table_and_plots(tiny_run):
    run_dir, code, out, err = tiny_run
    assert code == 0, err
    assert "128 tokens per step, fp32" in out
    assert "train: TGS, tokens per GPU per second" in out
    assert "batch=2 at 64 .. 1 at 128" in out  # the batch follows the length
    for name in ("records.jsonl", "records.parquet", "records.csv", "tgs.png",
                 "sweep-modelllama.png", "sweep-modeltnl.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert "ours, TNL-linear-masked tiny:" in out  # the findings under the plots


def test_help():
    code, out, _ = run_cli("tgs", "--help")
    assert code == 0 and "--tokens-per-step" in out and "<bool>" not in out


def test_records_are_training_steps(tiny_run):
    run_dir = tiny_run[0]
    df = records.load(run_dir).sort_values(["model", "seq_len"])
    assert list(df["status"]) == ["ok"] * 4
    assert list(zip(df["model"], df["mechanism"], df["seq_len"], df["batch"])) == [
        ("llama", "sdpa-math", 64, 2), ("llama", "sdpa-math", 128, 1),
        ("tnl", "linear-masked", 64, 2), ("tnl", "linear-masked", 128, 1)]
    assert (df["mode"] == "train").all() and (df["size"] == "tiny").all()
    assert (df["heads"] == 4).all() and (df["head_dim"] == 16).all()
    assert list(df["decay"]) == [False, False, True, True]
    assert (df["reps"] >= 5).all()  # timed steps, the warm-up steps apart
    assert (df["check"] == "pass").all()  # the attention inside checked against float64
    for r in df.itertuples():
        tokens = r.batch * r.seq_len
        assert r.tokens_per_s == pytest.approx(tokens / (r.time_ms / 1e3))
        flops = train_flops_per_token(config_for(r.model, r.size), r.seq_len) * tokens
        assert r.tflops == pytest.approx(flops / (r.time_ms / 1e3) / 1e12)


def test_views_read_a_tgs_run(tiny_run, tmp_path):
    run_dir = tiny_run[0]
    code, out, _ = run_cli("report", run_dir, "--metric", "tokens")
    assert code == 0 and "TGS" in out and "model" in out
    code, out, _ = run_cli("plot", run_dir, "--figure", "tgs", "--out", tmp_path,
                           "--format", "png")
    assert code == 0 and (tmp_path / "tgs.png").stat().st_size > 0
    assert "the paper's TNL-LA2 / LLaMA-FA2 at 0.4B" in out
    code, out, _ = run_cli("export", run_dir)
    names = {e["name"] for e in json.loads(out)}
    assert "attnbench/linear-masked/train/b2-h4-n64-d16-fp32-decay-tnl-tiny" in names


def test_compare_and_resume_of_tgs_runs(tiny_run, tmp_path):
    run_dir = tiny_run[0]
    again = tmp_path / "again"
    shutil.copytree(run_dir, again)
    code, out, err = run_cli("compare", run_dir, again, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert len(result["cases"]) == 4 and not any(c["failed"] for c in result["cases"])
    code, out, err = run_cli("tgs", "--resume", again, "--device", "cpu", "--no-plot")
    assert code == 0, err
    assert "4 cases (0 to run)" in out
    code, _, err = run_cli("tgs", "--resume", again, "--device", "cpu", "--size", "tiny")
    assert code == 2 and "give no other sweep options" in err


def test_oom_is_recorded_and_the_sweep_goes_on(install, tmp_path):
    """A mechanism out of memory at 128: recorded, longer lengths not tried, the next line
    still runs."""
    install(fake("fake-oom", oom_from(128)))
    spec = build_train_spec("cpu", models="tnl,llama", sizes="tiny",
                            mechanisms="fake-oom,sdpa-math", seq_lens="64,128,256",
                            max_case_seconds=1000)  # no budget verdict on a busy machine
    assert spec.tokens_per_step == 256  # the longest length
    df = run_sweep(spec, tmp_path / "run").frame
    tnl = df[df["model"] == "tnl"].sort_values("seq_len")
    assert list(tnl["status"]) == ["ok", "oom", "oom"]
    assert tnl["reason"].iloc[2].startswith("not tried: out of memory at seq_len 128")
    assert list(df.loc[df["model"] == "llama", "status"]) == ["ok"] * 3


def test_expand_one_line_per_model_and_mechanism():
    spec = build_train_spec("cuda", seq_lens="1k..4k", tokens_per_step="2k", checkpointing=True)
    cases = expand(spec)
    assert {(c.model, c.mechanism) for c in cases} == {
        ("llama", "flash2"), ("llama", "sdpa-cudnn"), ("tnl", "lightning2"),
        ("tnl", "lightning1")}
    assert [c.batch for c in cases if c.mechanism == "lightning2"] == [2, 1, 1]
    assert all(c.checkpointing and c.dtype == "bf16" and c.size == "0.4b" for c in cases)
    assert len({c.series() for c in cases}) == 4  # the batch is not part of a line
    assert cases[0].label() == "b2-h8-n1024-d128-bf16-llama-0.4b-ckpt"


@pytest.mark.parametrize("size, longest, tokens", [("0.4b", 128, 128), ("1b", 128, 128),
                                                    ("3b", 32, 32)])
def test_table1_is_the_papers_table_for_one_size(size, longest, tokens):
    spec = build_train_spec("cuda", sizes=size, table1=True)
    k = 1024
    assert spec.seq_lens == tuple(n * k for n in (1, 2, 4, 8, 16, 32, 64, 80, 92, 128)
                                  if n <= longest)
    assert (spec.sizes, spec.tokens_per_step, spec.checkpointing) == ((size,), tokens * k, True)
    assert spec.max_case_seconds == 480.0  # a cell is measured, not skipped for a budget of 120
    lines = {(c.model, c.mechanism) for c in expand(spec)}
    assert lines == {("llama", "flash2"), ("llama", "sdpa-cudnn"), ("tnl", "lightning2"),
                     ("tnl", "lightning1"), ("tnl", "peer-fla-chunk")}
    # what is given overrides the table's defaults
    spec = build_train_spec("cuda", sizes=size, table1=True, seq_lens="1k,2k", models="tnl",
                            max_case_seconds=60.0)
    assert spec.seq_lens == (1024, 2048) and spec.models == ("tnl",)
    assert spec.max_case_seconds == 60.0


def test_table1_takes_one_size():
    code, _, err = run_cli("tgs", "--table1", "--size", "0.4b,1b", "--device", "cpu")
    assert code == 2 and "--table1 takes one --size" in err


@pytest.mark.parametrize("args,message", [
    (["--models", "gpt"], "unknown model 'gpt'; choose from llama, tnl"),
    (["--size", "7b"], "unknown model size '7b'; choose from tiny, 0.4b, 1b, 3b"),
    (["--models", "tnl", "--mechanisms", "sdpa-math"],
     "tnl takes a linear attention mechanism; sdpa-math is softmax"),
    (["--models", "llama,tnl", "--mechanisms", "sdpa-math"],
     "none of --mechanisms sdpa-math can be tnl's attention"),
    (["--mechanisms", "nosuch"], "unknown mechanism or family 'nosuch'"),
    (["--models", "tnl", "--mechanisms", "short-only", "--seq-lens", "64,128"],
     "tnl tiny with short-only cannot take seq_len 128: takes at most 64 tokens"),
    (["--tokens-per-step", "0"], "bad size '0'"),
    (["--dtype", "fp16"], "unknown dtype 'fp16'; choose from bf16, fp32"),
])
def test_bad_input_is_one_line_and_exit_2(install, tmp_path, args, message):
    install(fake("short-only", oom_from(10**9),
                 case_limits=lambda c: "takes at most 64 tokens" if c.seq_len > 64 else ""))
    code, out, err = run_cli("tgs", "--device", "cpu", "--size", "tiny",
                             "--out", tmp_path / "run", *args)
    assert code == 2
    assert err.startswith("attnbench: error: ") and message in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_resume_of_an_operator_run_is_refused(tmp_path):
    run_dir = tmp_path / "op"
    run_dir.mkdir()
    records.write_meta(run_dir, {"spec": dict(
        mechanisms="linear-masked", seq_lens=[64], batch=[1], heads=[2], head_dims=[16],
        dtypes=["fp32"], modes=["fwd"], decay=True, device="cpu", max_case_seconds=1.0)})
    code, _, err = run_cli("tgs", "--resume", run_dir, "--device", "cpu")
    assert code == 2 and "is an operator sweep; continue it with attnbench run" in err


# --- notebooks/paper_tgs.ipynb: as shipped (a committed GPU run), and on the tiny CPU run ---

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "paper_tgs.ipynb"
FLAG = ('RUN_DIR = ["results/h100-table1-0.4b", "results/h100-table1-1b", '
        '"results/h100-table1-3b"]')


def _execute(nb):
    nbclient = pytest.importorskip("nbclient", reason="notebook tests need nbclient")
    pytest.importorskip("ipykernel", reason="notebook tests need a Jupyter kernel (ipykernel)")
    nbclient.NotebookClient(nb, timeout=HANG_GUARD_S, startup_timeout=HANG_GUARD_S,
                            kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    return outputs


def test_notebook_runs_as_shipped():
    """A newcomer opens the notebook and runs it: its RUN_DIR lists runs kept in git."""
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    outputs = _execute(nb)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1
    printed = "".join(o.get("text", "") for o in outputs)
    assert all(f"h100-table1-{size}: " in printed for size in ("0.4b", "1b", "3b"))
    assert "NVIDIA H100" in printed


def test_notebook_runs_on_a_tgs_run(tiny_run):
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat")
    run_dir = tiny_run[0]
    nb = nbformat.read(NOTEBOOK, as_version=4)
    flags = nb.cells[1]
    assert FLAG in flags.source
    flags.source = flags.source.replace(FLAG, f"RUN_DIR = {str(run_dir)!r}")
    outputs = _execute(nb)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1
    printed = "".join(o.get("text", "") for o in outputs)
    assert f"{run_dir}: 4 records; tiny: CPU" in printed
    markdown = "\n".join(o["data"]["text/markdown"] for o in outputs
                         if "text/markdown" in o.get("data", {}))
    assert "ours, LLaMA-sdpa-math tiny:" in markdown
    assert "the paper's TNL-LA2 / LLaMA-FA2 at 0.4B" in markdown


def test_notebook_takes_a_run_per_size(tiny_run):
    """Table 1 is a run per size: RUN_DIR may list them."""
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat")
    run_dir = tiny_run[0]
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells[1].source = nb.cells[1].source.replace(
        FLAG, f'RUN_DIR = ["results/h100-tgs-probe", {str(run_dir)!r}]')
    outputs = _execute(nb)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1
    printed = "".join(o.get("text", "") for o in outputs)
    assert "h100-tgs-probe: " in printed and f"{run_dir}: 4 records; tiny: CPU" in printed
    markdown = "\n".join(o["data"]["text/markdown"] for o in outputs
                         if "text/markdown" in o.get("data", {}))
    assert "ours, LLaMA-sdpa-math tiny:" in markdown and " 0.4b: " in markdown


def test_notebook_refuses_two_runs_of_the_same_cells(tiny_run):
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat")
    nbclient = pytest.importorskip("nbclient", reason="notebook tests need nbclient")
    run_dir = tiny_run[0]
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells[1].source = nb.cells[1].source.replace(FLAG, f"RUN_DIR = [{str(run_dir)!r}] * 2")
    with pytest.raises(nbclient.exceptions.CellExecutionError,
                       match="both measure .* give RUN_DIR one run per size"):
        _execute(nb)


def test_notebook_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert FLAG in code[0].source and "RERUN = False" in code[0].source
    source = "\n".join(c.source for c in code)
    assert "run_sweep(build_train_spec(" in source and "subprocess" not in source


def _train_row(model, mech, n, status="ok", tgs=float("nan"), extra=float("nan"),
               peak=float("nan")):
    from frames import row

    batch = max(1, 131072 // n)
    ms = batch * n / tgs * 1e3 if tgs == tgs else 1000.0
    r = row(mech, "train", n, status=status, ms=ms, mem=peak, model=model, size="0.4b",
            checkpointing=True, batch=batch)
    r["tokens_per_s"] = tgs if status == "ok" else float("nan")
    if status == "ok":  # steps within 0.2% of their median, as on the H100
        r["time_ms_p20"], r["time_ms_p80"] = 0.998 * ms, 1.002 * ms
    r["extra_mem_mib"] = extra if status == "ok" else float("nan")
    r["peak_mem_mib"] = peak
    return r


def test_findings_compare_the_tnl_lines_and_say_how_far_memory_goes():
    import pandas as pd

    from attnbench.paper.tgs import tgs_findings

    k, gb = 1024, 1024.0
    df = pd.DataFrame([
        _train_row("tnl", "lightning2", 1 * k, tgs=84e3, extra=20 * gb, peak=25 * gb),
        _train_row("tnl", "lightning2", 8 * k, tgs=83e3),
        _train_row("tnl", "lightning2", 64 * k, tgs=82e3, extra=21 * gb, peak=26 * gb),
        _train_row("tnl", "peer-fla-chunk", 1 * k, tgs=81e3, extra=20 * gb, peak=25 * gb),
        _train_row("tnl", "peer-fla-chunk", 8 * k, tgs=82.8e3),  # 0.24% apart: level
        _train_row("tnl", "peer-fla-chunk", 64 * k, tgs=83e3, extra=20 * gb, peak=25 * gb),
        _train_row("tnl", "lightning1", 1 * k, tgs=80e3),
        _train_row("llama", "flash2", 1 * k, tgs=75e3, extra=30 * gb, peak=35 * gb),
        _train_row("llama", "flash2", 64 * k, status="oom", peak=90.5 * gb),
    ])
    text = "\n".join(tgs_findings(df))
    assert ("ours, TNL-LA2 (lightning2) / TNL-peer-fla-chunk at 0.4b: 1.04x at 1k, 1.00x at "
            "8k, 0.99x at 64k; level at 8k (p20..p80 of the step times overlap); behind at "
            "64k, ahead at the others.") in text
    assert ("ours, TNL-LA2 (lightning2) / TNL-LA1 (lightning1) at 0.4b: 1.05x at 1k; ahead at "
            "every length both ran.") in text
    assert ("ours, TNL-LA2 (lightning2) 0.4b: fits at every length it ran, to 64k (21.0 GiB "
            "above the model and its optimizer state, 26.0 GiB at its peak).") in text
    assert ("ours, LLaMA-FA2 (flash2) 0.4b: runs to 1k (30.0 GiB above the model and its "
            "optimizer state, 35.0 GiB at its peak); out of memory at 64k (needed more than "
            "90.5 GiB).") in text
    assert "TNL-LA2 (lightning2) / LLaMA-FA2 (flash2) TGS at 0.4b: 1.12x at 1k." in text


def test_figure_notes_say_which_lengths_hold_fewer_tokens_and_which_mechanism_stood_in():
    import pandas as pd

    from attnbench.paper.tgs import _steps_by_size, stand_in_notes, tokens_per_step_text

    k = 1024
    rows = [_train_row("llama", "flash2", n * k) for n in (1, 64, 80, 92, 128)]
    for r in rows:
        r["impl"] = "torch 2.11.0 SDPA flash (FlashAttention 2.5.7)"
    rows.append(_train_row("tnl", "lightning2", 80 * k) | {"impl": "lightning_attn2: 8 segments"})
    train = pd.DataFrame(rows)
    assert tokens_per_step_text(train) == "128k tokens per step (one sequence at 80k, 92k)"
    assert tokens_per_step_text(train[train["seq_len"] != 80 * k][:-1]) == \
        "128k tokens per step (one sequence at 92k)"
    assert tokens_per_step_text(train[train["seq_len"] <= 64 * k]) == "128k tokens per step"
    longer = pd.DataFrame([_train_row("tnl", "lightning2", n * k) | {"batch": b}
                           for n, b in ((1, 64), (32, 2), (128, 1))])  # 64k tokens a step
    assert tokens_per_step_text(longer) == "64k tokens per step (one sequence at 128k)"
    uneven = pd.DataFrame([_train_row("tnl", "lightning2", n * k) | {"batch": b}
                           for n, b in ((1, 100), (4, 25), (32, 3))])  # 100k tokens a step
    assert tokens_per_step_text(uneven) == "100k tokens per step (96k at 32k)"
    sizes = pd.concat([train.assign(size="0.4b"), train.assign(size="1b"),
                       longer.assign(size="3b")])  # Table 1 in one figure: 3b steps less
    assert _steps_by_size(sizes) == ("0.4b, 1b: 128k tokens per step (one sequence at 80k, "
                                     "92k); 3b: 64k tokens per step (one sequence at 128k)")
    assert _steps_by_size(train) == tokens_per_step_text(train)
    assert stand_in_notes(train) == ["flash2 ran torch 2.11.0 SDPA flash (FlashAttention 2.5.7)"]
    assert stand_in_notes(train[train["mechanism"] == "lightning2"]) == []


def test_figure_marks_where_the_paper_ran_out_of_memory():
    """The paper's 1B stops at 92K (OOM): a mark there, in the legend too, not a bare tick."""
    import pandas as pd

    from attnbench.paper.tgs import tgs_figure
    from attnbench.plots import plt

    k = 1024
    df = pd.DataFrame([_train_row(m, mech, n * k, tgs=50e3 / n) | {"size": "1b", "impl": ""}
                       for m, mech in (("tnl", "lightning2"), ("llama", "flash2"))
                       for n in (1, 128)])
    fig = tgs_figure(df)
    rel_ax = fig.axes[0]
    marked = {x for c in rel_ax.collections for x, _ in c.get_offsets()}
    assert marked == {92 * k}  # every paper line's first OOM length; none of ours
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "paper: out of memory (top edge)" in legend
    plt.close(fig)
