"""Run the notebook series in order with papermill: `python -m maehelpers run`.

Executed copies go to <runs-root>/executed/. The series stops at the first failing notebook and
names it and the cell; notebooks before it and their run folders stay as they are, and a rerun
picks up where it stopped (pretraining resumes, finished evaluations are skipped).
"""
import socket
from pathlib import Path

from .data import DataError, STL10_FILES
from .durations import cpu_paths

NOTEBOOKS = ("00_data", "01_pretrain_original", "02_pretrain_improved", "03_linear_probe", "04_finetune",
             "05_visualize", "06_try_your_idea")
SERIES = NOTEBOOKS[:6]  # what `run` executes unless --only names others: 06 is a study of your own idea


class SeriesError(RuntimeError):
    """A notebook of the series failed; the message names it and the cell."""


def notebooks_dir() -> Path:
    here = Path(__file__).resolve().parents[1] / "notebooks"
    if not here.is_dir():
        raise FileNotFoundError(f"the notebooks are not at {here}: run from a clone of the repository")
    return here


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
