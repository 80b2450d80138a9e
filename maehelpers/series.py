"""The notebook series as one command, `python -m maehelpers run`, and how long it takes.

The notebooks run in order with papermill; executed copies go to <runs-root>/executed/. The series
stops at the first failing notebook and names it and the cell; notebooks before it and their run
folders stay as they are, and a rerun picks up where it stopped (pretraining resumes, finished
evaluations are skipped).

Durations are measured, never typed: measured_durations.json ships with the package and is written
by `python benchmarks/series_time.py` on the 2-core CPU this project is developed on (the CPU-sized
series timed as a user runs it; the `paper` and `fast` presets projected from measured step times).
Every suggestion the command line prints quotes them.
"""
import json
import socket
from functools import lru_cache
from pathlib import Path

from .data import STL10_FILES, DataError
from .generated import marks
from .paths import notebooks_dir


MEASURED_FILE = Path(__file__).with_name("measured_durations.json")
SERIES_COMMAND = {"ablation": "python -m maehelpers run --dataset fashion_mnist --preset ablation",
                  "smoke": "python -m maehelpers run --dataset synthetic --preset smoke"}
DURATIONS_MARKS = marks("durations", "python benchmarks/series_time.py")  # in docs/performance.md
CPU_PRESET = "ablation"  # what `run` chooses without a GPU: the real-data series that fits in minutes


@lru_cache(maxsize=None)
def measured() -> dict:
    return json.loads(MEASURED_FILE.read_text()) if MEASURED_FILE.exists() else {}


def span(seconds: float) -> str:
    """120 -> 'about 2 min', 26000 -> 'about 7 h'."""
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 90 * 60:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.0f} h"


def cpu_duration(preset: str) -> str:
    """'about 16 min measured ...' for a series that was timed, 'about 26 h projected ...' for a preset
    that was projected from step times, 'not measured' otherwise."""
    m = measured()
    where = f"on a {m['machine']['cores']}-core CPU, {m['date'][:10]}" if m else ""
    if preset in m.get("series", {}):
        return f"{span(m['series'][preset]['total_s'])} measured {where}"
    if preset in m.get("projected_cpu", {}):
        return f"{span(m['projected_cpu'][preset]['total_s'])} projected from step times measured {where}"
    return "not measured on a CPU"


def cpu_paths() -> str:
    """The choices without a GPU, the CPU-sized real-data run first, each with its duration."""
    return (f"  real images, the CPU-sized series (Fashion-MNIST from Debian; bash scripts/install_fashion_mnist.sh "
            f"first), {cpu_duration(CPU_PRESET)}:\n    {SERIES_COMMAND[CPU_PRESET]}\n"
            f"  synthetic images (checks the set-up), {cpu_duration('smoke')}:\n    {SERIES_COMMAND['smoke']}")


def run_banner(preset: str, dataset: str, cuda: bool, chosen: bool) -> str:
    """The first lines of `python -m maehelpers run`: what runs, how long it should take, how to stop
    and resume. chosen: the preset was picked for this machine (no --preset given)."""
    if cuda:
        how_long = ("its duration on a GPU is not measured yet; each pretraining prints its own after its "
                    "first steps")
    else:
        how_long = cpu_duration(preset) + (" (timed on Fashion-MNIST; STL-10 here has the same model, image "
                                           "size and steps)" if preset == CPU_PRESET and dataset == "stl10" else "")
    lines = [f"running notebooks 00-05 on {dataset} with preset '{preset}': {how_long}."]
    if chosen and not cuda:
        lines.append(f"No GPU here, so the CPU-sized preset '{preset}' was chosen; the paper's setting is "
                     f"--preset paper ({cpu_duration('paper')}), or a GPU runtime.")
    if dataset == "stl10":
        lines.append("STL-10 (2.6 GB) is downloaded first where it is not under the data folder.")
    lines.append("Stop with Ctrl-C at any time; the same command resumes (pretraining from its checkpoint, "
                 "finished evaluations are skipped).")
    return "\n".join(lines)


def durations_table() -> str:
    """The ways to run the series (and the paper's setting on a CPU), each with its measured duration;
    docs/performance.md carries this text verbatim (a test checks it)."""
    m = measured()
    rows = [("GPU (Colab, or local CUDA)", "the paper's setting: STL-10 at 224 px, 10 epochs per variant",
             "`python -m maehelpers run`", "not measured on a GPU yet; each pretraining prints its own after "
             "its first steps"),
            ("CPU with a network", f"STL-10, CPU-sized (preset `{CPU_PRESET}`: 28 px, 500 steps per variant)",
             "`python -m maehelpers run`", f"{cpu_duration(CPU_PRESET)}, plus the 2.6 GB download"),
            ("CPU offline", "Fashion-MNIST, the same preset (real images from Debian)",
             "`bash scripts/install_fashion_mnist.sh && python -m maehelpers run --dataset fashion_mnist`",
             cpu_duration(CPU_PRESET)),
            ("CPU, the paper's setting", "STL-10 at 224 px, 10 epochs per variant", "`python -m maehelpers run "
             "--preset paper`", cpu_duration("paper")),
            ("any machine, a set-up check", "synthetic images, preset `smoke`", f"`{SERIES_COMMAND['smoke']}`",
             cpu_duration("smoke"))]
    head = "| where | what runs | command | duration |\n|---|---|---|---|\n"
    note = (f"\nDurations: `python benchmarks/series_time.py` ({m.get('date', 'not run')}, "
            f"{m.get('machine', {}).get('cpu', '?')}, {m.get('machine', {}).get('torch_threads', '?')} threads, "
            f"1-minute load {m.get('load_1min', ['?'])[0]} before the runs); the paper preset's is projected from its measured step times "
            "(pretraining, fine-tuning, feature extraction; not the probes or the download).\n")
    return head + "".join(f"| {' | '.join(r)} |\n" for r in rows) + note


NOTEBOOKS = ("00_data", "01_pretrain_original", "02_pretrain_improved", "03_linear_probe", "04_finetune",
             "05_visualize", "06_try_your_idea")
SERIES = NOTEBOOKS[:6]  # what `run` executes unless --only names others: 06 is a study of your own idea


class SeriesError(RuntimeError):
    """A notebook of the series failed; the message names it and the cell."""


def select(only: str | None) -> list[str]:
    """'03,05' -> those notebooks; None -> all of them."""
    if not only:
        return list(SERIES)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    chosen = [nb for nb in NOTEBOOKS if any(nb.startswith(w.zfill(2)) for w in wanted)]
    unknown = [w for w in wanted if not any(nb.startswith(w.zfill(2)) for nb in NOTEBOOKS)]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; choose among {', '.join(n[:2] for n in NOTEBOOKS)}")
    return chosen


def _reachable(host: str, port: int = 80, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def preflight(dataset: str, data_root) -> None:
    """Fail at once, before any work, when STL-10 is neither on disk nor downloadable, naming the
    offline choices with their measured durations."""
    if dataset != "stl10":
        return
    folder = Path(data_root) / "stl10_binary"
    if all((folder / f"{f}_X.bin").exists() for f in STL10_FILES.values()):
        return
    if _reachable("ai.stanford.edu"):
        return
    raise DataError(
        f"STL-10 is not under {folder.resolve()} and ai.stanford.edu cannot be reached, so it cannot be "
        "downloaded. Either copy the extracted stl10_binary/ folder there, or run offline on:\n" + cpu_paths())


def run_series(parameters: dict, only: str | None = None, runs_root="runs", progress: bool = True) -> Path:
    """Execute the chosen notebooks with papermill; returns the folder of executed copies."""
    import papermill as pm
    chosen = select(only)
    src = notebooks_dir()
    out_dir = Path(runs_root) / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in chosen:
        out = out_dir / f"{name}.ipynb"
        declared = pm.inspect_notebook(str(src / f"{name}.ipynb"))  # each notebook gets only what it uses
        print(f"== {name}", flush=True)
        try:
            pm.execute_notebook(str(src / f"{name}.ipynb"), str(out),
                                parameters={k: v for k, v in parameters.items() if k in declared},
                                cwd=str(src.parent), progress_bar=progress, log_output=False)
        except pm.PapermillExecutionError as e:
            raise SeriesError(f"{name}.ipynb failed in cell {e.cell_index} (execution count {e.exec_count}): "
                              f"{e.ename}: {e.evalue}\nThe executed copy, with the traceback, is {out}. "
                              "Fix the cause and run again: finished work is not redone.") from None
    return out_dir
