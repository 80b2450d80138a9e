"""How long things take, as measured (never typed): the figures that every suggestion quotes.

measured_durations.json ships with the package and is written by `python benchmarks/series_time.py`
on the 2-core CPU this project is developed on: the CPU-sized series timed as a user runs it, and the
`paper` / `fast` presets projected from measured step times (they take too long to run here).
"""
import json
from functools import lru_cache
from pathlib import Path

MEASURED_FILE = Path(__file__).with_name("measured_durations.json")
SERIES_COMMAND = {"ablation": "python -m maehelpers run --dataset fashion_mnist --preset ablation",
                  "smoke": "python -m maehelpers run --dataset synthetic --preset smoke"}
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
