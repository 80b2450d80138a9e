"""The front page and the docs: every link resolves, the README stays a front page, and every
generated block equals what its command writes."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than hyphens and spaces dropped,
    spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set:
    in_code, out = False, set()
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            out.add(slug(line.lstrip("#")))
    return out


def links(page: Path) -> list:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not t.startswith(("http://", "https://", "mailto:"))]


def test_slugs_by_hand():
    assert slug("Registration 2: where MAE starts to work (16,000 steps)") == \
        "registration-2-where-mae-starts-to-work-16000-steps"
    assert slug("torch.compile: which number is which") == "torchcompile-which-number-is-which"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves_to_a_file_or_a_heading(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    first = "\n".join(lines[:40])
    assert "![" in first                                                  # a picture on the first screen
    assert "python -m maehelpers run" in first and "python -m pytest -q" in first   # set up and run; test
    assert "OWNER/REPO" not in "\n".join(lines)                           # no dead Colab link
    assert not any(line.startswith("|") and "date" in line.lower() for line in lines[:40])


def test_docs_hold_no_dated_tally():
    """A count with a date (tests run, mutations killed) goes stale: state it once, with its command."""
    for page in PAGES:
        text = page.read_text()
        assert not re.search(r"\d+ of \d+ killed", text), page.name
        assert not re.search(r"\b\d{2,4} passed\b", text), page.name


def test_presets_are_one_list():
    """The notebooks' parameter cell and docs/reference.md both come from config.PRESETS."""
    import make_notebooks
    from maehelpers.config import PRESETS, presets_table
    from maehelpers.generated import block
    assert block(ROOT / "docs" / "reference.md", make_notebooks.PRESETS_MARKS) == presets_table().strip()
    assert all(f"| `{name}` |" in presets_table() for name in PRESETS)
    assert all(name in make_notebooks.PARAMS["preset"] for name in PRESETS)


def test_readme_blocks_are_generated_from_the_address_and_the_records():
    import make_notebooks
    from maehelpers.generated import block
    from maehelpers.study.report import FINDINGS_MARKS, findings
    from maehelpers.study.settings import StudySettings
    readme = ROOT / "README.md"
    assert block(readme, make_notebooks.COLAB_MARKS) == make_notebooks.colab_text(make_notebooks.address()).strip()
    assert block(readme, make_notebooks.NOTEBOOKS_MARKS) == make_notebooks.notebooks_table(make_notebooks.address()).strip()
    assert block(readme, FINDINGS_MARKS) == findings(StudySettings()).strip()


def test_nothing_the_tests_docs_or_notebooks_read_is_ignored_by_git():
    """A file that is here but matched by .gitignore never reaches a clean checkout: the tests pass here
    and fail in CI (a `data/` pattern once swallowed tests/data/). Caches and run folders excepted."""
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(ROOT), "rev-parse"],
                                                     capture_output=True).returncode:
        pytest.skip("not a git checkout")
    folders = ["tests", "docs", "benchmarks", "notebooks", "scripts", "maehelpers", ".ci", "README.md"]
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--others", "--ignored", "--exclude-standard",
                          "--", *folders], capture_output=True, text=True, check=True).stdout
    caches = {"__pycache__", ".ipynb_checkpoints", "runs"}
    assert [f for f in out.splitlines() if not caches & set(Path(f).parts)] == []
