"""The inspector as a person uses it: notebook 05 in JupyterLab, in headless Chromium (Playwright).

    python -m pytest -q tests/test_browser.py -s      # only this test; -s prints where the screenshots are

Needs Debian's chromium (/usr/bin/chromium), and playwright + jupyterlab from requirements-test.txt;
`.ci/run` installs all three. Without them the test is skipped locally and fails in CI (CI=true),
naming what is missing. No browser is downloaded at run time.
"""
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_S = 240  # for the notebook to run and the inspector to draw, on 2 busy cores


def missing() -> list[str]:
    gone = [] if Path(CHROMIUM).exists() else ["chromium (apt-get install chromium)"]
    for module, name in (("playwright", "playwright"), ("jupyterlab", "jupyterlab")):
        try:
            __import__(module)
        except ImportError:
            gone.append(f"{name} (pip install -r requirements-test.txt)")
    return gone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 over a folder holding notebook 05 (smoke parameters) and the runs it
    reads; always shut down afterwards."""
    gone = missing()
    if gone:
        message = "the browser test needs " + ", ".join(gone)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook
    import nbformat
    from maehelpers.config import make_config
    from maehelpers.pretrain import pretrain
    work = tmp_path_factory.mktemp("lab")
    for variant in ("original", "improved"):
        pretrain(make_config(variant, "smoke", "synthetic"), work / "runs" / variant, progress=False)
    params = {"runs_root": str(work / "runs"), "data_root": str(work / "data"), "device": "cpu"}
    nb = parameterize_notebook(load_notebook_node(str(ROOT / "notebooks" / "05_visualize.ipynb")), params)
    nbformat.write(nb, work / "05_visualize.ipynb")
    port, token = free_port(), "maehelpers-test"
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--ServerApp.open_browser=False",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "w"), start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"JupyterLab did not start: {(work / 'server.log').read_text()[-2000:]}")
                time.sleep(1)
        yield {"url": url, "token": token, "work": work}
    finally:
        stop(server)


def stop(server) -> None:
    """End the server and the kernels it started (one process group)."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


def image_of(locator):
    from PIL import Image
    return Image.open(io.BytesIO(locator.screenshot())).convert("RGB")


def difference(a, b) -> float:
    """Mean absolute pixel difference (0-255) of two screenshots, resized to a common size."""
    import numpy as np
    b = b.resize(a.size)
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())


def set_slider(page, description: str, value: str) -> None:
    """Type a value into a slider's readout and commit it, as a person can."""
    slider = page.locator(".widget-slider", has=page.locator(f"label:text-is('{description}')")).first
    readout = slider.locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")


def wait_for_change(locator, before, threshold: float, timeout_s: float = 60):
    """Poll the element's screenshot until it differs from `before` by more than threshold."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        now = image_of(locator)
        if difference(before, now) > threshold:
            return now
        time.sleep(1)
    raise AssertionError(f"the picture did not change within {timeout_s} s")


def test_inspector_in_a_real_browser(lab):
    from playwright.sync_api import sync_playwright
    shots = Path(tempfile.mkdtemp(prefix="maehelpers-browser-"))
    print(f"\nscreenshots: {shots}")
    page_errors, console_errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{lab['url']}/lab/tree/05_visualize.ipynb?token={lab['token']}")
            page.wait_for_selector(".jp-Notebook", timeout=TIMEOUT_S * 1000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator, .jp-KernelStatus", timeout=60_000)
            time.sleep(3)  # the kernel connects
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            page.wait_for_selector(".widget-slider >> text=mask ratio", timeout=TIMEOUT_S * 1000)
            inspector = page.locator(".widget-vbox").filter(has=page.locator("text=mask ratio")).last
            picture = inspector.locator("img").last
            picture.wait_for(timeout=60_000)
            page.screenshot(path=str(shots / "notebook.png"), full_page=True)
            first = image_of(picture)
            first.save(shots / "inspector_0.75.png")

            for label in ("image", "mask ratio", "mask seed"):
                assert page.locator(f".widget-slider label:text-is('{label}')").count() >= 1, label
            outputs = " ".join(page.locator(".jp-OutputArea-output").all_inner_texts())
            assert "Traceback" not in outputs and "Could not draw" not in outputs

            set_slider(page, "mask ratio", "0.3")
            at_03 = wait_for_change(picture, first, threshold=2.0)
            at_03.save(shots / "inspector_0.30.png")
            set_slider(page, "mask ratio", "0.75")
            back = wait_for_change(picture, at_03, threshold=2.0)
            back.save(shots / "inspector_back.png")
            assert difference(first, back) < 1.0  # the same mask, the same picture again

            set_slider(page, "image", "3")
            other = wait_for_change(picture, back, threshold=2.0)
            other.save(shots / "inspector_image3.png")
        finally:
            browser.close()
    assert not page_errors, page_errors
    (shots / "console_errors.json").write_text(json.dumps(console_errors, indent=1))
