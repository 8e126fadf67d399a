"""The kiosk in a real browser (Playwright driving Debian's chromium): live update, read-first flow."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import shutil
from pathlib import Path

import pytest

from hipcad.appliance.config import load_config
from tests.appliance.support import (  # noqa: F401 - fixtures
    WorkerProcess,
    drop,
    finished,
    kiosk_server,
    radiographs,
    small_bundle,
    wait_for,
    write_config,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (/usr/bin/chromium)")


def screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("HIPCAD_SCREENSHOT_DIR"):
        target = Path(os.environ["HIPCAD_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


# what the page announces (kiosk.js): how each piece of news reached it
RECORD_NEWS = "window.__news = []; document.addEventListener('hipcad:news', e => window.__news.push(e.detail.via))"


def test_live_update_and_read_first_in_a_browser(tmp_path, small_bundle, radiographs):
    playwright_api = pytest.importorskip("playwright.sync_api")
    config_path = write_config(tmp_path, small_bundle)
    config = load_config(config_path, environ={})
    hot = tmp_path / "hot"
    drop(radiographs[0], hot)
    with WorkerProcess(config_path), kiosk_server(config) as url, \
            kiosk_server(dataclasses.replace(config, read_first=True)) as reader_url, \
            kiosk_server(dataclasses.replace(config, kiosk_push_streams=0)) as polling_url, \
            playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            wait_for(lambda: finished(config_path) == 1, 60, what="the first result")
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(url + "/")
            page.wait_for_selector("section.study[data-id='1']")
            page.evaluate("window.__sameDocument = 'still here'")
            page.evaluate(RECORD_NEWS)
            # the fallback: a kiosk with push turned off (as one whose streams are all in use) polls
            polling = browser.new_page()
            polling.on("pageerror", lambda err: errors.append(str(err)))
            polling.goto(polling_url + "/")
            polling.evaluate(RECORD_NEWS)
            # a new radiograph arrives after the page loaded: it must appear without a reload
            drop(radiographs[1], hot)
            page.wait_for_selector("section.study[data-id='2']", timeout=30000)
            assert page.evaluate("window.__sameDocument") == "still here"
            polling.wait_for_selector("section.study[data-id='2']", timeout=30000)
            assert set(page.evaluate("window.__news")) == {"push"}, "the news must arrive pushed"
            assert set(polling.evaluate("window.__news")) == {"poll"}
            card = page.inner_text("section.study[data-id='2']")
            assert "PATIENT RIGHT HIP" in card and "PATIENT LEFT HIP" in card
            assert ("FRACTURE SUSPECTED" in card) or ("no fracture detected" in card)
            assert page.locator("tr[data-id='1']").count() == 1  # the first one moved into the history
            assert "MODEL (" in page.inner_text("body") and "NOT FOR CLINICAL USE" in page.inner_text("body")
            assert page.evaluate("document.querySelector('section.study img').naturalWidth") > 0
            screenshot(page, tmp_path, "kiosk-live.png")
            assert not errors, errors

            # read-first: hidden before the reader's answer, shown after, both answers in the CSV
            reader = browser.new_page(viewport={"width": 1440, "height": 1000})
            reader.goto(reader_url + "/study/2")
            assert reader.locator(".verdict").count() == 0
            assert "/results/2/image.jpg" in reader.get_attribute("section.study img", "src")
            reader.fill("input[name=reader]", "Dr Night")
            reader.check("input[name=right][value='1']")
            reader.check("input[name=left][value='0']")
            screenshot(reader, tmp_path, "kiosk-read-first-before.png")
            reader.click("form.answer button[type=submit]")
            reader.wait_for_selector(".verdict")
            assert reader.locator("form.answer[data-phase='after']").count() == 1
            assert "/results/2/overlay.jpg" in reader.get_attribute("section.study figure img", "src")
            reader.check("input[name=right][value='0']")
            screenshot(reader, tmp_path, "kiosk-read-first-after.png")
            reader.click("form.answer button[type=submit]")
            reader.wait_for_selector(".recorded")
            text = reader.request.get(reader_url + "/export/reader-study.csv").text()
            rows = list(csv.DictReader(io.StringIO(text)))
            assert [(r["reader"], r["study_id"], r["side"], r["before"], r["after"]) for r in rows] == [
                ("Dr Night", "2", "right", "1", "0"), ("Dr Night", "2", "left", "0", "0")]
            assert rows[0]["file"] == radiographs[1].name and rows[0]["before_at"] and rows[0]["after_at"]
        finally:
            browser.close()
