"""The site acceptance report end to end: calibrate a copy of the demo model on one phantom set,
evaluate another with --report, open report.html in a real browser (Playwright driving Debian's
chromium) with the network cut off, and check every number on the page against report.json."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from hipcad.runtime.evaluation.report import resolve
from hipcad.runtime.model.bundle import DEFAULT_BUNDLE
from hipcad.runtime.tools.signing import sign_if_configured
from tests.helpers import run_cli

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _predictions(folder: Path) -> dict:
    with open(folder / "predictions.csv", newline="") as fh:
        return {(r["file"], r["side"]): r for r in csv.DictReader(fh)}


def _shown_matches(text: str, value) -> bool:
    """The number as written on the page is the JSON value, rounded as shown."""
    if value is None:
        return text == "n/a"
    if isinstance(value, str):
        return text == value
    text = text.strip()
    scale = 100.0 if text.endswith("%") else 1.0
    number = text.rstrip(" %")
    shown = float(number)
    decimals = len(number.split(".")[1]) if "." in number and "e" not in number else 0
    tolerance = max(0.5 * 10 ** -decimals / scale, 5e-3 * abs(value), 1e-12)
    return abs(shown / scale - value) <= tolerance


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    bundle = root / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    for name, seed, extra in (("validation", 11, []), ("site", 12, ["--subtlety", "neck=0.97-1"])):
        proc = run_cli("synth", "--out", str(root / name), "--count", "40", "--seed", str(seed), "--size", "800x640",
                       "-q", *extra)
        assert proc.returncode == 0, proc.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.pop("calibration", None)  # start from the raw scores, whatever the shipped bundle has
    manifest["operating_points"] = {"default": {"threshold": 0.5, "description": "probability of fracture >= threshold"}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    sign_if_configured(bundle)  # an edited manifest is signed again, as its maker would
    before = run_cli("evaluate", str(root / "site"), "--model", str(bundle), "--backend", "onnxruntime", "--json",
                     "--out", str(root / "before"))
    assert before.returncode == 0, before.stderr
    cal = run_cli("calibrate", str(bundle), str(root / "validation"), "--method", "platt", "--backend", "onnxruntime")
    assert cal.returncode == 0, cal.stderr
    assert "same verdicts" in cal.stdout
    proc = run_cli("evaluate", str(root / "site"), "--model", str(bundle), "--backend", "onnxruntime", "--json",
                   "--out", str(root / "after"), "--report", str(root / "report"), "--pdf")
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "bundle": bundle, "before": json.loads(before.stdout), "after": json.loads(proc.stdout)}


def test_calibration_changes_the_numbers_not_the_verdicts(evaluated):
    root, before, after = evaluated["root"], evaluated["before"], evaluated["after"]
    manifest = json.loads((evaluated["bundle"] / "manifest.json").read_text())
    cal = manifest["calibration"]
    assert cal["method"] == "platt" and cal["fitted_on"]["halves"] == 80 and cal["after"]["log_loss"] < cal["before"]["log_loss"]
    assert manifest["reference"]["halves"] == 80 and len(manifest["reference"]["logits"]) == 80
    point = manifest["operating_points"]["default"]
    assert point["threshold_uncalibrated"] == pytest.approx(0.5) and point["threshold"] != 0.5
    a, b = _predictions(root / "before"), _predictions(root / "after")
    assert a.keys() == b.keys()
    assert all(a[k]["predicted"] == b[k]["predicted"] for k in a)  # the same halves called fractured
    assert any(a[k]["probability"] != b[k]["probability"] for k in a)
    assert all(a[k]["logit"] == b[k]["logit"] for k in a)
    assert before["confusion"] == after["confusion"] and before["auc"] == after["auc"]
    assert not before["calibration"]["calibrated"] and after["calibration"]["calibrated"]
    assert after["calibration"]["uncalibrated"]["ece"]["value"] == pytest.approx(before["calibration"]["ece"]["value"], rel=1e-4)
    assert after["threshold"] == pytest.approx(point["threshold"])


def test_report_in_a_browser_shows_exactly_the_json(evaluated, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (/usr/bin/chromium)")
    folder = evaluated["root"] / "report"
    report = json.loads((folder / "report.json").read_text())
    assert report == evaluated["after"]  # the report's JSON is the one --json printed
    assert (folder / "report.pdf").read_bytes()[:5] == b"%PDF-"
    requests = []
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.route("**/*", lambda route: (requests.append(route.request.url),
                                              route.continue_() if route.request.url.startswith("file:") else route.abort()))
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto((folder / "report.html").as_uri())
            numbers = page.eval_on_selector_all(
                "[data-key]", "els => els.map(e => [e.dataset.key, e.dataset.value, e.textContent])")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.src.slice(0, 22), e.naturalWidth])")
            sections = page.eval_on_selector_all("h2[id]", "els => els.map(e => e.id)")
            figure_rows = page.locator("#versus-paper tr[data-figure]").count()
            cases = page.locator(".case").count()
            text = page.inner_text("body")
            path = tmp_path / "report.png"
            page.screenshot(path=str(path), full_page=True)
            if os.environ.get("HIPCAD_SCREENSHOT_DIR"):
                target = Path(os.environ["HIPCAD_SCREENSHOT_DIR"])
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target / "report.png")
        finally:
            browser.close()
    assert not errors, errors
    assert [u for u in requests if not u.startswith("file:")] == []  # self-contained: nothing fetched
    assert set(sections) >= {"summary", "model", "dataset", "figures", "roc", "calibration", "operating-points",
                             "subgroups", "eligibility", "heatmap", "misclassified", "methods"}
    assert figure_rows == 5 and "SYNTHETIC DEMO" in text
    assert images and all(src.startswith("data:image/") and width > 0 for src, width in images), images
    assert cases == len({m["file"] for m in report["misclassified"]}) > 0
    # every number on the page is the JSON's, at the pointer the page names
    assert len(numbers) > 150
    keys = {key for key, _, _ in numbers}
    for needed in ("/accuracy/value", "/auc/ci95/0", "/paper/sensitivity/value", "/calibration/ece/value",
                   "/eligibility/not_assessed", "/operating_points/default/threshold", "/n_misclassified",
                   "/subgroups/attributes/fracture_type/tests/sensitivity/p_holm", "/model/onnx_sha256"):
        assert needed in keys, needed
    for key, raw, shown in numbers:
        value = resolve(report, key)
        assert json.loads(raw) == value, key
        assert _shown_matches(re.sub(r"\s+", " ", shown), value), (key, shown, value)
