"""The study lives in the package (maehelpers/study/); this alias keeps the
commands written before the move, benchmarks/preregistered.md's among them, working:

    python benchmarks/ablation.py ARGS   is   python -m maehelpers study ARGS
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maehelpers.cli import study_command  # noqa: E402

if __name__ == "__main__":
    sys.exit(study_command(sys.argv[1:]))
