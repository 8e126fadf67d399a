"""Drift on the box: the worker records what it reads, the kiosk's /admin/drift, /api/drift and
/metrics compare it with the bundle's reference. A stream whose VOI window breaks half way (a
window set too narrow and too high: bone saturates, soft tissue goes black) is flagged."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.stats as st
from PIL import Image

from hipcad.appliance import drift
from hipcad.appliance.config import load_config
from hipcad.appliance.kiosk import create_app
from hipcad.appliance.storage.store import Store
from hipcad.runtime.model.bundle import DEFAULT_BUNDLE, load_bundle
from hipcad.runtime.model.reference import LOGIT_EDGES, N_BINS, bin_index, histogram
from tests.appliance.support import WorkerProcess, drop, finished, kiosk_server, wait_for, write_config
from tests.helpers import run_cli

RECENT = 50


def broken_voi(src: Path, dst: Path) -> Path:
    """The radiograph as a wrong VOI window shows it: centre 190 of 255, a third of the width."""
    pixels = np.asarray(Image.open(src).convert("L"), dtype=np.float64)
    Image.fromarray(np.clip((pixels - 190) * 3 + 128, 0, 255).astype(np.uint8)).save(dst, quality=92)
    return dst


def test_counts_bins_and_the_binned_ks_test():
    assert bin_index(-1e9) == 0 and bin_index(10.0) == N_BINS - 1 and bin_index(float("inf")) == N_BINS - 1
    assert bin_index(0.0) == bin_index(0.49) == int(np.searchsorted(LOGIT_EDGES, 0.0, side="right"))
    counts, ring = drift.counts_for({"status": "done", "warnings": ["View Position is 'LL', not AP or PA"],
                                     "sides": [{"side": "right", "probability": 0.9, "logit": 2.2, "fracture": True},
                                               {"side": "left", "probability": 0.1, "fracture": False}]})
    assert counts["assessed"] == 1 and counts["positive:right"] == 1 and "positive:left" not in counts
    assert counts[f"bin:right:{bin_index(2.2)}"] == 1
    assert counts[f"bin:left:{bin_index(np.log(0.1 / 0.9))}"] == 1  # an old record: log-odds from the probability
    assert counts["warned"] == 1 and ring == [("study", drift.ASSESSED + drift.WARNED), ("right", bin_index(2.2)),
                                              ("left", bin_index(np.log(0.1 / 0.9)))]
    counts, ring = drift.counts_for({"status": "done", "eligible": False, "sides": [],
                                     "eligibility": {"reasons": ["lateral view 2 of 3", "other"]}})
    assert counts == {"studies": 1, "ineligible": 1, "ineligible:lateral view # of #": 1} and ring == [("study", 1)]
    assert drift.counts_for({"status": "failed"}) == ({"studies": 1, "unreadable": 1}, [("study", drift.UNREADABLE)])
    # values on bin centres: binning loses nothing, so D is scipy's; p from the same asymptotic law
    rng = np.random.default_rng(0)
    centres = (LOGIT_EDGES[:-1] + LOGIT_EDGES[1:]) / 2
    a, b = rng.choice(centres[10:30], 150), rng.choice(centres[14:34], 200)
    got = drift.ks_binned(histogram(a), histogram(b))
    ref = st.ks_2samp(a, b, method="asymp")
    assert got["statistic"] == pytest.approx(ref.statistic) and got["p_value"] == pytest.approx(ref.pvalue, rel=0.3, abs=1e-6)
    assert drift.ks_binned(histogram(a), histogram(a))["p_value"] == 1.0


def _phantoms(folder: Path, count: int, seed: int) -> list[Path]:
    proc = run_cli("synth", "--out", str(folder), "--count", str(count), "--seed", str(seed), "--size", "640x480",
                   "--formats", "jpeg", "-q")
    assert proc.returncode == 0, proc.stderr
    return sorted(folder.glob("*.jpg"))


def _metric(text: str, name: str, **labels) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{wanted}}} not in /metrics")


def test_a_broken_voi_window_half_way_is_flagged(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    _phantoms(tmp_path / "validation", 60, 21)
    proc = run_cli("calibrate", str(bundle), str(tmp_path / "validation"), "--backend", "onnxruntime")
    assert proc.returncode == 0, proc.stderr
    assert load_bundle(bundle).manifest["reference"]["halves"] == 120
    normal = _phantoms(tmp_path / "normal", RECENT, 22)
    shifted_dir = tmp_path / "shifted"
    shifted_dir.mkdir()
    shifted = [broken_voi(p, shifted_dir / f"voi_{p.name}") for p in _phantoms(tmp_path / "later", RECENT, 23)]
    config_path = write_config(tmp_path, bundle, drift_recent=RECENT)
    config = load_config(config_path, environ={})
    client = create_app(config).test_client()
    hot = tmp_path / "hot"
    with WorkerProcess(config_path) as worker:
        for path in normal:
            drop(path, hot)
        wait_for(lambda: finished(config_path) == RECENT, 300, interval=0.5, what="the first half")
        first = client.get("/api/drift").get_json()
        first_metrics = client.get("/metrics").get_data(as_text=True)
        for path in shifted:
            drop(path, hot)
        wait_for(lambda: finished(config_path) == 2 * RECENT, 300, interval=0.5, what="the second half")
        assert worker.alive()
    second = client.get("/api/drift").get_json()
    page = client.get("/admin/drift").get_data(as_text=True)
    metrics = client.get("/metrics").get_data(as_text=True)
    # first half: like the validation, nothing flagged
    assert first["reference"]["halves"] == 120 and first["model"] == load_bundle(bundle).key
    assert [first["recent_sides"][s]["halves"] for s in ("right", "left")] == [RECENT, RECENT]
    assert first["flags"] == [], first["flags"]
    assert all(first["recent_sides"][s]["ks"]["p_value"] > 0.01 for s in ("right", "left"))
    assert _metric(first_metrics, "hipcad_drift_shift", window=f"last{RECENT}", side="right") == 0
    # second half: the latest hips are (nearly) all from the broken window: flagged on both sides.
    # A window that broken may make a radiograph ineligible: not assessed, counted as such.
    ineligible = sum(d["ineligible"] for d in second["daily"])
    assessed = sum(d["assessed"] for d in second["daily"])
    assert assessed + ineligible == 2 * RECENT and ineligible <= RECENT // 5
    for side in ("right", "left"):
        latest = second["recent_sides"][side]
        assert latest["shift"] and latest["ks"]["p_value"] < 0.01 and latest["ks"]["statistic"] > 0.3, latest["ks"]
        assert _metric(metrics, "hipcad_drift_shift", window=f"last{RECENT}", side=side) == 1
        assert _metric(metrics, "hipcad_drift_ks_p_value", window=f"last{RECENT}", side=side) < 0.01
        assert second["sides"][side]["halves"] == assessed  # today's counts hold both halves
    assert {f["key"] for f in second["flags"]} >= {"recent-right", "recent-left"}
    assert 'data-shift="1"' in page and "DRIFT: Scores of patient right hips among the last" in page
    assert page.count("<svg") >= 7
    assert _metric(metrics, "hipcad_drift_radiographs", window="14d", outcome="assessed") == assessed
    assert sum(d["studies"] for d in second["daily"]) == 2 * RECENT
    _screenshot(config, tmp_path)


def _screenshot(config, tmp_path: Path) -> None:
    """The drift page in chromium (where Playwright and chromium are installed): flagged, charts drawn."""
    chromium = Path("/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return
    if not chromium.exists():
        return
    with kiosk_server(config) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), headless=True,
                                     args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url + "/admin/drift")
            assert page.locator("#drift-status[data-shift='1'] [data-flag='recent-right']").count() == 1
            assert page.evaluate("[...document.querySelectorAll('svg.chart')].every(s => s.getBBox().width > 0)")
            path = tmp_path / "drift.png"
            page.screenshot(path=str(path), full_page=True)
            if os.environ.get("HIPCAD_SCREENSHOT_DIR"):
                shutil.copy(path, Path(os.environ["HIPCAD_SCREENSHOT_DIR"]) / "drift.png")
        finally:
            browser.close()


def test_the_store_keeps_a_year_of_days_and_a_bounded_ring(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    try:
        store.drift_add("2020-01-01", "m", {"studies": 1}, [("study", 0)], "2019-01-01", 3)
        store.drift_add("2020-01-01", "m", {"studies": 2}, [("right", 5), ("study", 4)], "2019-01-01", 3)
        assert [tuple(r) for r in store.drift_counts("2020-01-01")] == [("2020-01-01", "m", "studies", 3)]
        assert store.drift_recent("study", 10) == [4, 0] and store.drift_recent("right", 10, "other") == []
        store.drift_add("2021-06-01", "m", {"studies": 1}, [("study", 1), ("study", 2)], "2020-06-01", 3)
        assert store.drift_counts("2000-01-01")[0]["day"] == "2021-06-01"  # the old day is gone
        assert store.drift_recent("study", 10) == [2, 1, 4]  # only the newest 3 ring rows stay
    finally:
        store.close()


def test_summary_without_a_reference_or_data(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    try:
        bundle = load_bundle(DEFAULT_BUNDLE)
        manifest = {k: v for k, v in bundle.manifest.items() if k != "reference"}
        bundle.manifest = manifest
        out = drift.summary(store, bundle, now=time.time())
        assert out["reference"] is None and out["flags"] == [] and len(out["daily"]) == 56
        assert out["sides"]["right"]["ks"] is None and out["rates"]["assessed"]["p_value"] is None
        json.dumps(out)
    finally:
        store.close()
