"""Where the package reaches into the repository it came from: the study's records and its
registration, the notebooks and the docs. Only a clone (or Colab's editable install of one) has
them; each helper says so in one sentence when they are missing, instead of failing later."""
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]            # the repository, for a clone or an editable install
RESULTS = ROOT / "benchmarks" / "results"             # the study's records, its report and pictures
PREREGISTRATION = ROOT / "benchmarks" / "preregistered.md"
NOTEBOOKS = ROOT / "notebooks"
DOCS = ROOT / "docs"


class NotACheckout(FileNotFoundError):
    """The package is installed without its repository, and the repository's files were asked for."""


def in_checkout(path: Path, what: str) -> Path:
    """`path` if it exists, else NotACheckout naming `what` and how to get it."""
    if not Path(path).exists():
        raise NotACheckout(f"{what} is not at {path}: it lives in the repository, not in the installed package. "
                           "Clone the repository and install it with `pip install -e .` (the notebooks' first "
                           "cell does this in Colab).")
    return Path(path)


def notebooks_dir() -> Path:
    return in_checkout(NOTEBOOKS, "the notebook series")


def records_file(name: str = "ablation_runs.jsonl") -> Path:
    """The study's committed records (the default) or another file under benchmarks/results/."""
    return in_checkout(RESULTS / name, "the study's records")
