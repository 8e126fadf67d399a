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
            assert rows[0]["file"] == "" and rows[0]["before_at"] and rows[0]["after_at"]  # no login: no file names
        finally:
            browser.close()


def spki_hash(cert_path: Path) -> str:
    """base64 sha256 of a certificate's public key: what Chromium's --ignore-certificate-errors-spki-list pins."""
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_sign_in_over_tls_in_a_browser(tmp_path, small_bundle, radiographs):
    """The kiosk as a screen on the network would use it: HTTPS (cheroot, TLS 1.2+), a named reader
    signs in, the study is shown, the session cookie is Secure/HttpOnly/SameSite=Strict, sign-out."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    from hipcad.appliance.kiosk.accounts import add_user
    from tests.appliance.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    add_user(tmp_path / "users", "alice", "correct horse battery")
    config_path = write_config(tmp_path, small_bundle, kiosk_users_file=str(tmp_path / "users"),
                               kiosk_allow_unauthenticated_loopback=False, kiosk_tls_cert=str(pki["box"]),
                               kiosk_tls_key=str(pki["box_key"]))
    config = load_config(config_path, environ={})
    drop(radiographs[0], tmp_path / "hot")
    with WorkerProcess(config_path), kiosk_server(config) as url, playwright_api.sync_playwright() as pw:
        assert url.startswith("https://127.0.0.1:")
        wait_for(lambda: finished(config_path) == 1, 60, what="the first result")
        untrusting = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:  # a certificate the browser does not trust: no page
            with pytest.raises(playwright_api.Error, match="ERR_CERT"):
                untrusting.new_page().goto(url + "/login")
        finally:
            untrusting.close()
        # the screen trusts the box's key (as a hospital CA in its trust store would make it)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={spki_hash(pki['box'])}"])
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            response = page.goto(url + "/")
            assert page.url.startswith(url + "/login")
            assert response.headers.get("strict-transport-security", "").startswith("max-age=")
            page.fill("input[name=user]", "alice")
            page.fill("input[name=password]", "wrong password")
            page.click("button[type=submit]")
            assert "Unknown reader or wrong password" in page.inner_text("body")
            page.fill("input[name=user]", "alice")
            page.fill("input[name=password]", "correct horse battery")
            page.click("button[type=submit]")
            page.wait_for_selector("section.study[data-id='1']")
            assert page.inner_text("#signed-in") == "alice"
            (cookie,) = page.context.cookies()
            assert cookie["name"] == "__Host-hipcad" and cookie["secure"] and cookie["httpOnly"]
            assert cookie["sameSite"] == "Strict"
            screenshot(page, tmp_path, "kiosk-tls-signed-in.png")
            page.click("form.logout button")
            page.wait_for_url(url + "/login*")
            assert page.goto(url + "/").url.startswith(url + "/login")
        finally:
            browser.close()
