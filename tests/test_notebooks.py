"""The notebook series: structure of the committed files, nbval regression run, papermill runner."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NAMES = ["00_data", "01_pretrain_original", "02_pretrain_improved", "03_linear_probe", "04_finetune",
         "05_visualize"]
MAX_OUTPUT_BYTES = 2000


def load(name):
    return nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)


def tags(cell):
    return cell.metadata.get("tags", [])


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_structure(name):
    nb = load(name)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")   # title + why
    assert "find_spec(\"maehelpers\")" in nb.cells[1].source                            # Colab install
    assert sum("parameters" in tags(c) for c in nb.cells) == 1
    params = next(c for c in nb.cells if "parameters" in tags(c)).source
    for key in ("dataset", "preset", "data_root", "runs_root", "seed", "device"):
        assert f"\n{key} = " in "\n" + params, key
    checked = [c for c in nb.cells if "nbval-check-output" in tags(c)]
    assert checked and all(c.outputs for c in checked)          # something deterministic is compared
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert all(o.output_type != "error" for o in cell.outputs)
        assert len(json.dumps(cell.outputs)) <= MAX_OUTPUT_BYTES
        assert cell.outputs == [] or "nbval-check-output" in tags(cell)


def test_01_and_02_differ_only_in_parameters():
    code = [[c.source for c in load(n).cells if c.cell_type == "code"] for n in NAMES[1:3]]
    diff = [(a, b) for a, b in zip(*code) if a != b]
    assert len(code[0]) == len(code[1]) and len(diff) == 1
    assert 'variant = "original"' in diff[0][0] and 'variant = "improved"' in diff[0][1]


def test_committed_notebooks_match_their_generator():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from make_notebooks import build
    finally:
        sys.path.pop(0)
    for name, nb in build().items():
        committed = nbformat.read(NB_DIR / name, as_version=4)
        assert [c.source for c in nb.cells] == [c.source for c in committed.cells], name


def test_series_runs_under_nbval(tmp_path):
    """Every notebook end to end on the smoke preset (synthetic data), comparing the stored outputs
    of the cells tagged nbval-check-output; other outputs (times, bars) are not compared."""
    params = {"dataset": "synthetic", "preset": "smoke", "data_root": str(tmp_path / "data"),
              "runs_root": str(tmp_path / "runs")}
    for name in NAMES:
        nbformat.write(parameterize_notebook(load_notebook_node(str(NB_DIR / f"{name}.ipynb")), params), tmp_path / f"{name}.ipynb")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                          "--nbval-current-env", *[str(tmp_path / f"{n}.ipynb") for n in NAMES]],
                         capture_output=True, text=True, cwd=tmp_path, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout.splitlines()[-1]


def test_papermill_runner_stops_names_the_cell_and_resumes(tmp_path):
    base = [sys.executable, "-m", "maehelpers", "run", "--preset", "smoke", "--dataset", "synthetic",
            "--runs-root", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data")]
    bad = subprocess.run(base + ["-p", "lp_epochs", "0"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert bad.returncode == 2
    assert "03_linear_probe.ipynb failed in cell" in bad.stderr and "lp_epochs" in bad.stderr
    runs = tmp_path / "runs"
    for name in NAMES[:3]:
        assert (runs / "executed" / f"{name}.ipynb").exists()
    done = {v: (runs / v / "checkpoint_last.pt").stat().st_mtime_ns for v in ("original", "improved")}
    good = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert good.returncode == 0, good.stderr[-3000:]
    assert {v: (runs / v / "checkpoint_last.pt").stat().st_mtime_ns for v in done} == done  # not redone
    for name in NAMES:
        executed = nbformat.read(runs / "executed" / f"{name}.ipynb", as_version=4)
        assert all(o.output_type != "error" for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    for variant in ("original", "improved", "scratch"):
        results = json.loads((runs / variant / "results.json").read_text())
        assert {"lp_top1", "knn_top1", "ft_top1"} <= set(results), variant
    assert "psnr_masked" in json.loads((runs / "original" / "results.json").read_text())
    from PIL import Image
    width, height = Image.open(runs / "compare" / "recon_grid.png").size
    assert width == 960 and height == 1050   # 6 columns x 6 images at the viz module's fixed size
    assert "| original | original |" in good.stdout                          # the final table is printed


def test_runner_offline_stl10_stops_at_once(tmp_path, monkeypatch):
    from maehelpers import runner
    from maehelpers.data import DataError
    monkeypatch.setattr(runner, "_reachable", lambda host, port=80, timeout=3.0: False)
    with pytest.raises(DataError) as e:
        runner.preflight("stl10", tmp_path)
    assert "--dataset fashion_mnist" in str(e.value) and "--dataset synthetic --preset smoke" in str(e.value)
    with pytest.raises(ValueError, match="choose among"):
        runner.select("07")
    assert runner.select("3,05") == ["03_linear_probe", "05_visualize"]
