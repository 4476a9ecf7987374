"""The HTML report as QA staff see it: served by a real uvicorn server, rendered by headless
Chromium, checked on the screenshot (not blank: colours, ink, the charts' colours) and on the
markup (the table holds the model card's numbers; every text from the data is escaped).

Chromium cannot send an ``Authorization`` header from its command line, so the test fetches
the page with httpx and the qa key, writes it to a file and screenshots the ``file://`` URL.
That is faithful: the page loads nothing else (no scripts, stylesheets, images or fonts; see
test_roles.py::test_the_page_is_html_and_self_contained). Without Chromium the test is
skipped with the reason, except under CI=true, where it FAILS (install Debian's ``chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI
from PIL import Image

from services.reports.svg import SCORE_COLORS, SERIES_COLORS
from shared.db.models import JobMode
from tests.api.conftest import Keys
from tests.fixtures_db import peer_unavailable

from .helpers import INTERPRETATION, Seeder, seed_model_card

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1280,1600"]


def chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    peer_unavailable(f"no headless Chromium on PATH (looked for {', '.join(BROWSERS)})",
                     hint="apt-get install -y chromium")


def screenshot(browser: str, page: Path, out: Path) -> Image.Image:
    profile = out.parent / "chromium-profile"
    profile.mkdir()
    done = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", page.as_uri()],
                          capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0 and out.exists(), (done.returncode, done.stderr[-2000:])
    return Image.open(out).convert("RGB")


def near(pixels: np.ndarray, color: str, tolerance: int = 24) -> np.ndarray:
    """Which pixels (N x 3) are within ``tolerance`` of ``color`` (#rrggbb) in every channel."""
    target = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    return np.asarray((np.abs(pixels - target) <= tolerance).all(axis=1))


def section(page: str, element_id: str) -> str:
    match = re.search(rf'<(table|section|div) [^>]*id="{element_id}".*?</\1>', page, re.S)
    assert match, element_id
    return match.group(0)


def test_the_page_renders_in_a_browser_with_the_model_cards_numbers(
        sqlite_app: FastAPI, sqlite_seeder: Seeder, sqlite_keys: Keys, serve: Callable[[FastAPI], str],
        tmp_path: Path) -> None:
    browser = chromium()
    seed_model_card(sqlite_seeder)
    jobs = sqlite_seeder.jobs(2, mode=JobMode.autonomous, label='<script>alert("x")</script>', model="rev-<b>")
    sqlite_seeder.reviews(jobs, INTERPRETATION, [2, 0], reviewer='"><img src=x onerror=alert(1)>')
    base = serve(sqlite_app)

    response = httpx.get(f"{base}/v1/reports/scores.html", params={"group_by": "mode"},
                         headers=sqlite_keys.qa.headers, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    hitl = re.search(r"<tr><td class=\"key\">hitl</td>.*?</tr>", section(page, "scores"), re.S)
    assert hitl, "no hitl row in the table"
    row = hitl.group(0)
    for figure in ("<td>49</td>", "1.286", "73.5%", "1.449", "63.3%", "1.368", "36 · 12 · 1 · 0", "31 · 14 · 4 · 0"):
        assert figure in row, (figure, row)
    # Text from the data is escaped everywhere (labels, model revisions, reviewer names).
    assert "<script" not in page and "<img" not in page and "rev-<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page and "rev-&lt;b&gt;" in page
    for chart in ("chart-distribution", "chart-daily", "chart-labels", "chart-models"):
        assert "<svg" in section(page, chart), chart

    file = tmp_path / "report.html"
    file.write_text(page, encoding="utf-8")
    image = screenshot(browser, file, tmp_path / "report.png")
    assert image.size == (1280, 1600)
    pixels = np.asarray(image, dtype=np.int16).reshape(-1, 3)
    rgb = pixels.astype(np.int32)
    colours = len(np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]))
    assert colours >= 200, f"only {colours} distinct colours: a blank or broken page"
    ink = float((pixels.min(axis=1) < 200).mean())
    assert ink > 0.08, f"only {ink:.1%} of the page is drawn on"
    # The charts and table bars were painted: their colours are on screen.
    for name, colour in {"score 1": SCORE_COLORS[1], "score 2": SCORE_COLORS[2], "score 3": SCORE_COLORS[3],
                         "interpretation": SERIES_COLORS["interpretation"],
                         "annotation": SERIES_COLORS["annotation"]}.items():
        painted = int(near(pixels, colour).sum())
        assert painted > 300, f"{name} ({colour}): {painted} pixels"
