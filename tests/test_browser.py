"""A classroom demo and the course's book in a real browser: headless Chromium driven by Playwright.

One test opens notebook 02 in JupyterLab (on loopback), runs every cell from JupyterLab's Run menu, moves the head
slider of the attention explorer and checks that the heatmap changed. Another opens the book `make course` builds
from file://, follows its sidebar from chapter 02 to 03, checks the math is typeset and search works, with no request
leaving the machine. Screenshots go to build/screenshots/ for the README. The tests install Debian's `chromium` (and a
font for the book's Chinese pages) when missing (no browser download: Playwright only drives the system's Chromium),
and are skipped, saying why, only where Chromium cannot be installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from llmcourse.files import COURSE_ROOT

pytestmark = pytest.mark.slow

NOTEBOOK = "02_self_attention.ipynb"
SCREENSHOTS = COURSE_ROOT / "build" / "screenshots"
# Render every cell (JupyterLab 4 otherwise renders only those in view), start the kernel without asking, and ask
# no question about news.
LAB_SETTINGS = {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
                "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"}}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Chromium is not installed and this user cannot install it (needs root and apt-get): "
                    "install Debian's `chromium` package to run the browser test")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "chromium", "fonts-wqy-microhei"]  # the font: the book's Chinese
    for command in (["apt-get", "update", "-qq"], install):
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"Chromium could not be installed ({' '.join(command)} failed): {proc.stderr.strip()[-300:]}")
    return shutil.which("chromium") or pytest.skip("apt-get installed chromium but it is not on PATH")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """JupyterLab serving a copy of the notebooks (so nothing it saves touches the repository), on loopback."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(COURSE_ROOT / "notebooks", root / "notebooks")
    settings = root / "settings"
    for name, value in LAB_SETTINGS.items():
        path = settings / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    port = _free_port()
    env = dict(os.environ, LLMCOURSE_FAST="1", JUPYTER_CONFIG_DIR=str(root / ".jupyter"),
               JUPYTERLAB_SETTINGS_DIR=str(settings))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
         "--LabApp.expose_app_in_browser=True",
         f"--ServerApp.root_dir={root / 'notebooks'}", "--allow-root"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"JupyterLab did not start on {url} (exit code {proc.poll()})")
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_for_kernel(url: str, seconds: float = 180) -> None:
    """Wait until the server reports the notebook's kernel idle: a run issued earlier is dropped by JupyterLab."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        with urllib.request.urlopen(f"{url}/api/sessions", timeout=5) as response:
            sessions = json.load(response)
        if any(s["path"].endswith(NOTEBOOK) and s["kernel"]["execution_state"] == "idle" for s in sessions):
            return
        time.sleep(0.5)
    pytest.fail(f"the kernel of {NOTEBOOK} did not become idle within {seconds:.0f} s")


def test_attention_explorer_responds_in_the_browser(jupyterlab):
    chromium = _chromium()
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is part of the course's dev "
                                     "dependencies: run `make test`, which installs it")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(240_000)
        try:
            before, after = _run_and_move_slider(page, jupyterlab)
        except Exception:
            page.screenshot(path=SCREENSHOTS / "browser_test_failure.png")
            raise
        finally:
            browser.close()
    assert after != before, "moving the head slider did not redraw the attention heatmap"


def _run_and_move_slider(page, url: str) -> tuple[str, str]:
    """Open the notebook, run all cells, move the explorer's head slider; the heatmap's src before and after."""
    page.goto(f"{url}/lab/tree/{NOTEBOOK}")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    _wait_for_kernel(url)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached")
    page.evaluate("window.jupyterapp.commands.execute('runmenu:run-all')")  # the Run menu's "Run All Cells"

    slider = page.locator(".widget-slider", has_text="head").first
    slider.wait_for(state="attached")
    slider.scroll_into_view_if_needed()
    image = page.locator(".jupyter-widgets img").last
    image.wait_for()
    page.wait_for_timeout(1000)
    before = image.get_attribute("src")
    page.screenshot(path=SCREENSHOTS / "attention_explorer.png")

    handle = slider.locator(".noUi-handle, .ui-slider-handle").first
    handle.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old", arg=[image.element_handle(), before],
                           timeout=30_000)
    after = image.get_attribute("src")
    page.screenshot(path=SCREENSHOTS / "attention_explorer_head1.png")
    return before, after


def test_presenter_serves_a_notebook_with_live_widgets(tmp_path):
    """`make present` runs Voila: it must execute a notebook and serve its widgets, offline, on loopback."""
    port = _free_port()
    notebook = tmp_path / NOTEBOOK
    shutil.copy(COURSE_ROOT / "notebooks" / NOTEBOOK, notebook)
    proc = subprocess.Popen([sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}",
                             "--Voila.ip=127.0.0.1"], env=dict(os.environ, LLMCOURSE_FAST="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, page = time.time() + 300, None
        while page is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=240) as response:
                    page = response.read().decode()
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"Voila did not serve {NOTEBOOK} (exit code {proc.poll()})")
                time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "application/vnd.jupyter.widget-view+json" in page, "Voila's page holds no live widget"
    assert "Traceback" not in page, "a cell failed when Voila executed the notebook"


def test_the_book_reads_in_a_browser_from_file(built_book):
    """The book from file://: the sidebar leads from chapter 02 to 03, MathJax (shipped in the book) typesets 03's
    math, the search page finds notebook 07, and nothing is fetched from outside the book's folder."""
    chromium = _chromium()
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is part of the course's dev "
                                     "dependencies: run `make test`, which installs it")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    fetched = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)
        page.on("request", lambda request: fetched.append(request.url))
        try:
            page.goto((built_book.site / "02_self_attention.html").as_uri())
            page.locator("nav.bd-docs-nav a[href='03_mlp_and_backprop.html']").click()
            page.wait_for_url("**/03_mlp_and_backprop.html")
            math = page.locator("article mjx-container").first
            math.wait_for()  # MathJax replaced a \(...\) span with typeset math
            math.scroll_into_view_if_needed()
            page.screenshot(path=SCREENSHOTS / "book_chapter.png")

            page.goto((built_book.site / "search.html").as_uri() + "?q=KV-cache")
            page.locator("ul.search a[href*='07_kv_cache.html']").first.wait_for()
        except Exception:
            page.screenshot(path=SCREENSHOTS / "book_test_failure.png")
            raise
        finally:
            browser.close()
    outside = [url for url in fetched if not url.startswith(("file:", "data:"))]
    assert not outside, f"the book fetched from outside its folder: {outside}"
