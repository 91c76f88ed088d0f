"""Both notebooks run top to bottom on the CPU and draw every figure from a stored run.

Each runs once, on a copy of results/h100-paper whose absolute path is written into its flag
cell (as papermill would), so the test also shows that the notebook reads the run it is
asked for. A fresh measurement (RERUN) needs a GPU and is not run here: its cell is checked
to call the library (run_sweep, build_spec), never a subprocess.
"""

import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat (pip install "
                                                  "'attnbench[dev]')")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need nbclient (pip install "
                                                  "'attnbench[dev]')")

# Not a deadline on speed (cells take seconds; a busy machine may take far longer): a
# guard against a kernel that hangs.
HANG_GUARD_S = 600

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
REAL_RUN = ROOT / "results" / "h100-paper"
FLAG = 'RUN_DIR = "results/h100-paper"'
# notebook: (figures it shows, text its markdown output must hold)
EXPECTED = {"paper_kernels.ipynb": (2, "forward runtime"),
            "paper_official_numbers.ipynb": (1, "ours / official is")}


def read(name: str):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def outputs(nb, key: str) -> list[str]:
    return [o["data"][key] for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if key in o.get("data", {})]


@pytest.fixture(scope="module")
def run_copy(tmp_path_factory):
    if not REAL_RUN.is_dir():
        pytest.skip("results/h100-paper is not in the checkout")
    copy = tmp_path_factory.mktemp("runs") / "h100-paper-copy"
    copy.mkdir()
    for name in ("meta.json", "records.jsonl"):
        shutil.copy(REAL_RUN / name, copy / name)
    return copy


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_on_a_stored_run(name, run_copy):
    pytest.importorskip("ipykernel", reason="notebook tests need a Jupyter kernel (ipykernel)")
    nb = read(name)
    flags = nb.cells[1]
    flags.source = flags.source.replace(FLAG, f"RUN_DIR = {str(run_copy)!r}")
    nbclient.NotebookClient(nb, timeout=HANG_GUARD_S, startup_timeout=HANG_GUARD_S,
                            kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors
    n_figures, text = EXPECTED[name]
    assert len(outputs(nb, "image/png")) == n_figures
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert f"{run_copy}: " in printed and "records; h100-paper-copy: NVIDIA H100" in printed
    assert text in "\n".join(outputs(nb, "text/markdown"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_committed_without_outputs(name):
    nb = read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), (
        f"{name} has outputs: jupyter nbconvert --clear-output --inplace notebooks/{name}")
    assert FLAG in code[0].source and "RERUN = False" in code[0].source


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_measures_through_the_library(name):
    source = "\n".join(c.source for c in read(name).cells if c.cell_type == "code")
    assert "from attnbench import build_spec, run_sweep" in source
    assert 'run_sweep(build_spec(preset="paper", device="cuda", seq_lens="1k..256k"), ' \
           "out=run_dir)" in source
    assert "subprocess" not in source and "ATTNBENCH_RUN_DIR" not in source
