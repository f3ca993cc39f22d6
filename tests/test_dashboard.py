"""Where users look: dlt's dashboard in a real headless Chromium, and the marimo notebook run headless, on demo data."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO_ROOT, run_cli

TABLES = ["chat_completions", "chat_completions_stream", "embeddings", "info", "models", "retrieve"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    """A folder where `python gaia_pipeline.py --demo` ran, as a user's project folder."""
    result = run_cli(tmp_path, "--demo")
    assert result.returncode == 0, result.stderr
    return tmp_path


def test_dashboard_shows_the_gaia_tables_in_a_real_browser(demo_dir: Path) -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    import dlt._workspace.helpers.dashboard.dlt_dashboard as dashboard
    from playwright.sync_api import sync_playwright

    port = _free_port()
    pipelines_dir = Path(os.environ["DLT_DATA_DIR"]) / "pipelines"
    server = subprocess.Popen(
        [sys.executable, "-m", "marimo", "run", dashboard.__file__, "--host", "127.0.0.1", "--port", str(port),
         "--headless", "--", "--pipeline", "gaia_pipeline", "--pipelines-dir", str(pipelines_dir)],
        cwd=demo_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "the dashboard did not start"
            time.sleep(0.3)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                      "--disable-sync", "--no-first-run"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            # a JS app: wait for what it renders (locators reach into marimo's shadow DOM)
            page.get_by_text("Pipeline gaia_pipeline").first.wait_for(timeout=90_000)
            for table in TABLES:
                page.get_by_text(table, exact=True).first.wait_for(timeout=60_000)
            shot = demo_dir / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert shot.stat().st_size > 20_000
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_notebook_runs_headless_on_demo_data(demo_dir: Path) -> None:
    notebook = REPO_ROOT / "notebooks" / "gaia_explore.py"
    report = demo_dir / "report.html"
    result = subprocess.run([sys.executable, "-m", "marimo", "export", "html", str(notebook), "-o", str(report)],
                            cwd=demo_dir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr  # marimo exits 1 when any cell fails
    html = report.read_text(encoding="utf-8")
    for heading in ("Token usage per request", "Latency per model over time", "The slowest requests",
                    "Time to first token", "Embedding similarity search (cosine, in SQL)", "Retrieval score distribution"):
        assert heading in html, heading
    # rendered outputs are escaped JSON in the export (the notebook's source is in there too, so match outputs only)
    for table, rows in (("chat_completions", 3), ("embeddings", 6), ("retrieve", 3)):
        assert f"{table}\\u003C/code\\u003E: {rows} rows" in html, table
    assert "\\u003Cem\\u003ENo " not in html  # no section rendered its "no rows yet" notice
    script = subprocess.run([sys.executable, str(notebook)], cwd=demo_dir, capture_output=True, text=True, timeout=300)
    assert script.returncode == 0, script.stderr
