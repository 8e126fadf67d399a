"""``hipcad bench --appliance`` on a small model and small radiographs: every delivery reaches a
real browser's screen, the news comes pushed (and polled on the kiosk with push off), and drop ->
screen stays within a generous bound (a regression guard, not a timing of the machine)."""

from __future__ import annotations

import json
import shutil

import pytest

from hipcad.runtime.tools import bench_appliance
from tests.appliance.support import radiographs, small_bundle  # noqa: F401 - fixtures

SETTLE_S = 0.5
#: what the box may add to the worker's own reading (decode ... overlay) before the verdict is on
#: the screen, beyond settle_s: detection, intake, queue, store, push and render take ~0.2-0.4 s
#: here. The bound catches a regression of the kind that costs seconds (a lost push falling back
#: to 2 s polling on every drop, a worker loop that sleeps, a kiosk that stalls), with room for a
#: shared 2-core CI machine that is busy elsewhere: it is not a timing of the machine.
OVERHEAD_BOUND_MS = 8000.0

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")


def test_drop_to_screen_within_a_generous_bound(tmp_path, capsys, small_bundle, radiographs):
    pytest.importorskip("playwright.sync_api")
    import pydicom

    dicom = next(p for p in radiographs if p.suffix == ".dcm"
                 and pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian)
    jpeg = next(p for p in radiographs if p.suffix == ".jpg")
    code = bench_appliance.main(["--model", str(small_bundle), "--inputs", str(dicom), str(jpeg), "--images", "1",
                                 "--settle", str(SETTLE_S), "--timeout", "90", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(out.out)
    assert not report["failed_drops"]
    drops = report["drops"]
    assert sorted((d["delivery"], d["kind"]) for d in drops) == sorted(
        [("rename", dicom.name), ("rename", jpeg.name), ("close", dicom.name), ("close", jpeg.name), ("cstore", dicom.name)])
    for d in drops:
        reading = sum(d[k] for k in ("decode", "preprocess", "inference", "postprocess", "overlay"))
        for page in ("push", "poll"):
            overhead = d[page]["screen_ms"] - reading
            assert 0 < overhead <= SETTLE_S * 1000.0 + OVERHEAD_BOUND_MS, (page, d)
        assert d["push"]["via"] in ("push", None) and d["poll"]["via"] in ("poll", None), d
        if d["delivery"] != "cstore":  # the hot folder's part is measured (C-STORE has none)
            assert d["detect_settle"] >= 0 and d["intake"] >= 0, d
    assert any(d["push"]["via"] == "push" for d in drops)
    assert report["results"]["all"]["n"] == 5 and report["results"]["all"]["push"]["screen_ms"]["p50"] > 0
    assert report["model"]["onnx_sha256"] and report["machine"]["host"] and report["machine"]["cores"]


def test_missing_browser_is_named(tmp_path, capsys):
    assert bench_appliance.main(["--chromium", str(tmp_path / "no-browser"), "--images", "1"]) == 2
    assert "needs Chromium" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_appliance.main(["--deliveries", "fax"])
    assert "choose from rename, close, cstore" in capsys.readouterr().err
