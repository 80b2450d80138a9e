"""The notebook series: structure of the committed files, nbval regression run, papermill runner."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from conftest import write_fake_stl10

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NAMES = ["00_data", "01_pretrain_original", "02_pretrain_improved", "03_linear_probe", "04_finetune",
         "05_visualize", "06_try_your_idea"]
SERIES = NAMES[:6]  # what `python -m maehelpers run` executes; 06 runs with --only 06


def load(name):
    return nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)


def pictures(cells) -> int:
    return sum("image/png" in o.get("data", {}) for c in cells if c.cell_type == "code" for o in c.outputs)


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
    for key in ("data_root", "device", "use_drive"):
        assert f"\n{key} = " in "\n" + params, key
    evaluating = name[:2] in ("03", "04", "05")  # these read dataset, preset and seed from each run
    for key in ("dataset", "preset", "seed"):
        assert (f"\n{key} = " in "\n" + params) != evaluating, key
    assert ("\nforce = " in "\n" + params) == (name[:2] not in ("00", "06"))   # 00 writes nothing; 06 reuses its records
    assert nb.metadata["accelerator"] == "GPU" and nb.metadata["colab"]["gpuType"]
    url = next(line.split("=", 1)[1].strip().strip('"') for line in (ROOT / "pyproject.toml").read_text().splitlines()
               if line.startswith("Repository"))
    assert f'REPO_URL = "{"" if url.endswith("OWNER/REPO") else url}"' in nb.cells[1].source
    checked = [c for c in nb.cells if "nbval-check-output" in tags(c)]
    assert checked and all(c.outputs for c in checked)          # something deterministic is compared
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert all(o.output_type != "error" for o in outputs)
    assert not any(o.output_type == "stream" and o.name == "stderr" for o in outputs)   # no progress bars
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)       # the documented run's pictures
    printed = "".join(o.text for o in outputs if o.output_type == "stream")
    assert "/tmp/" not in printed and "<project>/data" in printed  # no scratch folder that readers lack
    assert (NB_DIR / f"{name}.ipynb").stat().st_size < 1_000_000


def test_01_and_02_differ_only_in_parameters():
    code = [[c.source for c in load(n).cells if c.cell_type == "code"] for n in NAMES[1:3]]
    diff = [(a, b) for a, b in zip(*code) if a != b]
    assert len(code[0]) == len(code[1]) and len(diff) == 1
    assert 'variant = "original"' in diff[0][0] and 'variant = "improved"' in diff[0][1]


def test_committed_notebooks_match_their_generator():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from make_notebooks import build, committed_run
    finally:
        sys.path.pop(0)
    for name, nb in build(committed_run()).items():  # the note under each title names the stored outputs' run
        committed = nbformat.read(NB_DIR / name, as_version=4)
        assert [(c.source, tags(c)) for c in nb.cells] == [(c.source, tags(c)) for c in committed.cells], name


def test_cells_drawn_from_the_study_records_show_the_committed_records():
    """The cells tagged study-records print what the committed records give now, and draw their
    picture: new records reach the notebooks with `make_notebooks.py --study-cells`, or this fails."""
    import contextlib
    import io
    from unittest import mock

    import matplotlib.pyplot as plt

    from maehelpers import notebook as nb
    tagged = [(n, c) for n in NAMES for c in load(n).cells if "study-records" in tags(c)]
    assert len(tagged) >= 3
    for name, cell in tagged:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), mock.patch("IPython.display.display"):
            exec(cell.source, {"nb": nb})
        plt.close("all")
        stored = "".join(o.text for o in cell.outputs if o.output_type == "stream")
        assert stored == printed.getvalue(), f"{name}: run python scripts/make_notebooks.py --study-cells"
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), f"{name}: {cell.source} draws nothing"
        if "15 of its 15 registered records are in" in stored:   # a complete stage says its verdict, not just where
            assert "Does pretraining beat scratch for fine-tuning (20 epochs)? " in stored, name


def test_series_runs_under_nbval(tmp_path):
    """Every notebook end to end on the smoke preset (synthetic data), comparing the stored outputs
    of the cells tagged nbval-check-output; other outputs (times, bars) are not compared."""
    params = {"dataset": "synthetic", "preset": "smoke", "data_root": str(tmp_path / "data"),
              "runs_root": str(tmp_path / "runs"), "live_widgets": False, "official_look": False}
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
    for name in SERIES[:3]:
        assert (runs / "executed" / f"{name}.ipynb").exists()
    done = {v: (runs / v / "checkpoint_last.pt").stat().st_mtime_ns for v in ("original", "improved")}
    good = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert good.returncode == 0, good.stderr[-3000:]
    assert {v: (runs / v / "checkpoint_last.pt").stat().st_mtime_ns for v in done} == done  # not redone
    assert not (runs / "executed" / "06_try_your_idea.ipynb").exists()
    for name in SERIES:
        executed = nbformat.read(runs / "executed" / f"{name}.ipynb", as_version=4)
        assert all(o.output_type != "error" for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    for variant in ("original", "improved", "scratch"):
        results = json.loads((runs / variant / "results.json").read_text())
        assert {"lp_top1", "knn_top1", "ft_top1"} <= set(results), variant
    assert "psnr_masked" in json.loads((runs / "original" / "results.json").read_text())
    assert json.loads((runs / "scratch" / "results.json").read_text())["ft"]["layer_decay"] == 1.0
    from PIL import Image
    width, height = Image.open(runs / "compare" / "recon_grid.png").size
    # image, masked, 3 views of each norm-pix model, 1 of the pixel-target model; 6 images
    assert width == 160 * (2 + 3 + 3 + 1) and height == 1050
    assert not json.loads((runs / "original_pixels" / "results.json").read_text())["config"]["model"]["norm_pix_loss"]
    assert "| original | 1 |" in good.stdout and "; original 0;" in good.stdout   # the final table, its seeds named


def test_repo_url_lives_in_pyproject_and_one_command_changes_it(tmp_path):
    """With the placeholder, no Colab link anywhere (each would be dead) and the install cell asks for an
    upload; one command sets the address, and the badges and the install cell carry it, the pictures kept."""
    import shutil
    placeholder = "https://github.com/OWNER/REPO"
    assert f'Repository = "{placeholder}"' in (ROOT / "pyproject.toml").read_text()   # the state committed here
    assert "OWNER/REPO" not in (ROOT / "README.md").read_text()
    assert "colab.research.google.com/github" not in (ROOT / "README.md").read_text()
    for name in NAMES:
        assert 'REPO_URL = ""' in load(name).cells[1].source and "OWNER" not in load(name).cells[1].source
    copy = tmp_path / "repo"
    copy.mkdir()
    for part in ("pyproject.toml", "README.md", "scripts", "notebooks", "maehelpers", "docs"):
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, copy / part)
    out = subprocess.run([sys.executable, "scripts/make_notebooks.py", "--repo-url", "https://github.com/me/fork"],
                         cwd=copy, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'Repository = "https://github.com/me/fork"' in (copy / "pyproject.toml").read_text()
    readme = (copy / "README.md").read_text()
    for name in NAMES:
        assert f"colab.research.google.com/github/me/fork/blob/main/notebooks/{name}.ipynb" in readme
        cells = nbformat.read(copy / "notebooks" / f"{name}.ipynb", as_version=4).cells
        assert 'REPO_URL = "https://github.com/me/fork"' in cells[1].source
        assert pictures(cells) == pictures(load(name).cells) > 0, "the committed pictures must survive"
    assert "from https://github.com/me/fork" in readme and "OWNER/REPO" not in readme
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    subprocess.run(["git", "remote", "add", "origin", "git@github.com:them/theirs.git"], cwd=copy, check=True)
    out = subprocess.run([sys.executable, "scripts/make_notebooks.py", "--repo-url"], cwd=copy, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'Repository = "https://github.com/them/theirs"' in (copy / "pyproject.toml").read_text()


def test_install_cell_says_what_to_do_without_an_address_and_when_cloning_fails(tmp_path):
    """Run the install cell where maehelpers is missing: without an address it asks for the upload;
    with one that cannot be cloned it says what failed, and the upload still works as a way out."""
    source = load(NAMES[0]).cells[1].source.replace('importlib.util.find_spec("maehelpers") is None', "True")
    script = tmp_path / "cell.py"
    script.write_text(source)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "has no repository address" in out.stderr and "mae/" in out.stderr
    script.write_text(source.replace('REPO_URL = ""', f'REPO_URL = "{tmp_path / "nowhere"}"'))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "Installing maehelpers failed" in out.stderr and "upload a copy of the repository" in out.stderr


def test_colab_paths_go_to_drive_and_elsewhere_stay_local(tmp_path, monkeypatch, capsys):
    import types
    from maehelpers import notebook as nb
    mounted = []
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=lambda path: mounted.append(path))
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(nb, "DRIVE_HOME", tmp_path / "MyDrive" / "maehelpers")
    paths = nb.setup("data", "experiments/runs", device="cpu")          # use_drive None: on in Colab
    assert mounted == [str(nb.DRIVE_MOUNT)]
    assert paths.runs_root == tmp_path / "MyDrive" / "maehelpers" / "experiments" / "runs"  # the full path kept
    assert paths.data_root == tmp_path / "MyDrive" / "maehelpers" / "data"                 # the download too
    assert "No GPU in this runtime" in capsys.readouterr().out
    absolute = nb.setup("data", str(tmp_path / "elsewhere"), device="cpu")
    assert absolute.runs_root == tmp_path / "elsewhere"
    monkeypatch.delitem(sys.modules, "google.colab")
    monkeypatch.chdir(tmp_path)
    local = nb.setup("data", "runs", use_drive=True, device="cpu")
    assert "use_drive applies in Colab only" in capsys.readouterr().out
    assert local.runs_root == tmp_path / "runs" and len(mounted) == 2   # no mount outside Colab


def test_runner_passes_each_notebook_only_its_parameters(tmp_path, monkeypatch):
    import papermill as pm
    from maehelpers import series as runner
    seen = {}
    monkeypatch.setattr(pm, "execute_notebook", lambda src, out, parameters, **kw: seen.__setitem__(Path(src).stem, parameters))
    runner.run_series({"dataset": "synthetic", "preset": "smoke", "seed": 3, "runs_root": str(tmp_path),
                       "lp_epochs": 2}, "00,01,03", tmp_path)
    assert seen["00_data"] == {"dataset": "synthetic", "preset": "smoke", "seed": 3, "runs_root": str(tmp_path)}
    assert "lp_epochs" not in seen["01_pretrain_original"] and seen["01_pretrain_original"]["seed"] == 3
    assert seen["03_linear_probe"] == {"runs_root": str(tmp_path), "lp_epochs": 2}


def test_durations_quoted_to_users_are_the_committed_measurements():
    from maehelpers import series as d
    m = d.measured()
    assert m, "maehelpers/measured_durations.json is missing: python benchmarks/series_time.py"
    for preset, command in d.SERIES_COMMAND.items():   # the command quoted is the command timed
        assert m["series"][preset]["command"] == command and m["series"][preset]["total_s"] > 0
    assert {"paper", "fast"} <= set(m["projected_cpu"])
    assert d.span(m["series"]["ablation"]["total_s"]) in d.cpu_duration("ablation")


def test_performance_docs_quote_the_measured_durations():
    from maehelpers import series
    from maehelpers.generated import block
    assert block(ROOT / "docs" / "performance.md", series.DURATIONS_MARKS) == series.durations_table().strip()


def test_cpu_duration_reads_the_measurement_file(monkeypatch):
    from maehelpers import series as d
    fake = {"date": "2000-01-01 00:00 UTC", "machine": {"cores": 2}, "series": {"ablation": {"total_s": 3000}},
            "projected_cpu": {"paper": {"total_s": 36000}}}
    monkeypatch.setattr(d, "measured", lambda: fake)
    assert d.cpu_duration("ablation") == "about 50 min measured on a 2-core CPU, 2000-01-01"
    assert d.cpu_duration("paper").startswith("about 10 h projected")
    assert d.cpu_duration("fast") == "not measured on a CPU"


def _run_args(**kw):
    import argparse
    return argparse.Namespace(**{"preset": None, "dataset": "synthetic", "data_root": "data", "runs_root": "runs",
                                 "seed": 0, "device": "auto", "parameter": [], "only": None, **kw})


@pytest.mark.parametrize("cuda, preset, expected", [(False, None, "ablation"), (True, None, "paper"),
                                                    (False, "smoke", "smoke")])
def test_run_chooses_the_preset_for_the_machine_and_says_what_runs(monkeypatch, capsys, tmp_path, cuda, preset,
                                                                   expected):
    from maehelpers import cli, series
    seen = {}
    monkeypatch.setattr(series, "run_series", lambda params, only, root: seen.update(params) or tmp_path)
    cli.run_command(_run_args(preset=preset, data_root=str(tmp_path)), cuda=cuda)
    out = capsys.readouterr().out
    assert seen["preset"] == expected
    assert f"preset '{expected}'" in out.splitlines()[0] and "Ctrl-C" in out and "resumes" in out
    if expected == "ablation":   # chosen for a CPU: it says so, how long, and how to ask for the paper's setting
        assert series.cpu_duration("ablation") in out and "--preset paper" in out
        assert series.cpu_duration("paper") in out
    else:
        assert "was chosen" not in out


def test_runner_offline_stl10_stops_at_once_and_offers_the_cpu_sized_series_first(tmp_path, monkeypatch):
    from maehelpers import series
    from maehelpers.data import DataError
    monkeypatch.setattr(series, "_reachable", lambda host, port=80, timeout=3.0: False)
    with pytest.raises(DataError) as e:
        series.preflight("stl10", tmp_path)
    text = str(e.value)
    real, synthetic = text.index(series.SERIES_COMMAND["ablation"]), text.index("--dataset synthetic --preset smoke")
    assert real < synthetic and series.cpu_duration("ablation") in text[:real]
    with pytest.raises(ValueError, match="choose among"):
        series.select("07")
    assert series.select("3,05") == ["03_linear_probe", "05_visualize"]


def test_colab_copies_stl10_from_drive_to_the_runtime_disk_once(tmp_path, monkeypatch, capsys):
    from maehelpers import notebook as nb
    drive = tmp_path / "MyDrive" / "data"
    write_fake_stl10(drive)
    monkeypatch.setattr(nb, "LOCAL_DATA", tmp_path / "content" / "data")
    assert nb.local_copy(drive) == tmp_path / "content" / "data"
    copied = tmp_path / "content" / "data" / "stl10_binary" / "train_X.bin"
    assert copied.read_bytes() == (drive / "stl10_binary" / "train_X.bin").read_bytes()
    assert "copying" in capsys.readouterr().out
    assert nb.local_copy(drive) == tmp_path / "content" / "data" and "copying" not in capsys.readouterr().out
    assert nb.local_copy(tmp_path / "empty") == tmp_path / "empty"       # nothing on Drive yet: download there


def test_regenerating_keeps_every_cells_outputs_when_a_cell_is_inserted_above_it():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_notebooks as mk
    finally:
        sys.path.pop(0)
    notebooks = mk.build(mk.committed_run())
    nb = notebooks["01_pretrain_original.ipynb"]
    nb.cells.insert(5, nbformat.v4.new_code_cell("print('a cell added to the story')"))
    for i, cell in enumerate(nb.cells):           # ids are positions: every later cell's id shifts
        cell.id = f"01-{i:02d}"
    mk.keep_committed_outputs(notebooks)
    committed = {c.source: len(c.outputs) for c in load("01_pretrain_original").cells if c.cell_type == "code"}
    kept = {c.source: len(c.outputs) for c in nb.cells if c.cell_type == "code" and c.source in committed}
    assert kept == committed and sum(committed.values()) > 0
