"""hipcad predict end to end: the JSON contract, bad inputs, exit status, sides on a flipped image."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.helpers import phantom, run_cli, write_dicom

pytestmark = pytest.mark.heavy


def _png_header_only(path, width, height):
    """A PNG whose IHDR declares width x height and whose data is a few bytes: a decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    good_jpg = d / "good.jpg"
    Image.fromarray(phantom(4401, 0, size=(1000, 700))[0]).save(good_jpg, quality=92)
    good_png = d / "good.png"
    Image.fromarray(phantom(4401, 1, size=(800, 500))[0]).save(good_png)
    good_dcm = write_dicom(d / "good.dcm", (phantom(4401, 2, size=(900, 600))[0].astype(np.uint16) * 16),
                           PatientOrientation=["L", "F"], BodyPartExamined="PELVIS", ViewPosition="AP")
    truncated = d / "truncated.jpg"
    truncated.write_bytes(good_jpg.read_bytes()[:2000])
    corrupt = d / "corrupt.dcm"
    raw = bytearray(good_dcm.read_bytes())
    raw[200:260] = b"\xff" * 60  # smash the header after the preamble
    corrupt.write_bytes(bytes(raw))
    empty = d / "empty.dcm"
    empty.write_bytes(b"")
    text = d / "notes.txt"
    text.write_text("this is not a radiograph\n")
    bomb = _png_header_only(d / "bomb.png", 60000, 60000)
    return {"good": [good_jpg, good_png, good_dcm], "bad": [truncated, corrupt, empty, text, bomb]}


def test_predict_json_contract_and_bad_inputs(b4_bundle, inputs, tmp_path):
    files = [inputs["good"][0], *inputs["bad"], *inputs["good"][1:]]
    proc = run_cli("predict", *map(str, files), "--model", str(b4_bundle), "--out", str(tmp_path), "--json",
                   "--backend", "onnxruntime")
    assert proc.returncode == 1, "some inputs failed, so the exit status must say so"
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["input"] for r in lines] == list(map(str, files)), "every input reported, in order"
    for r in lines:
        assert set(r) >= {"input", "ok", "error", "sides", "overlay", "timings_ms"}
        assert "total" in r["timings_ms"]
    by_name = {r["input"].rsplit("/", 1)[1]: r for r in lines}
    for name in ("good.jpg", "good.png", "good.dcm"):
        r = by_name[name]
        assert r["ok"] is True and r["error"] is None and r["eligible"] is True
        assert [s["side"] for s in r["sides"]] == ["right", "left"]
        assert 0.35 <= r["metadata"]["midline_confidence"] <= 1.0
        for s in r["sides"]:
            assert 0.0 <= s["probability"] <= 1.0 and s["fracture"] == (s["probability"] >= 0.5)
        assert set(r["timings_ms"]) >= {"decode", "eligibility", "preprocess", "inference", "postprocess", "total"}
        overlay = Image.open(r["overlay"])
        assert max(overlay.size) <= 1024 and overlay.mode == "RGB" and overlay.format == "JPEG"
        assert r["overlay"].endswith(".overlay.jpg")
    expected = {
        "truncated.jpg": "truncated",
        "corrupt.dcm": "",
        "empty.dcm": "empty",
        "notes.txt": "not a DICOM, JPEG or PNG",
        "bomb.png": "megapixels",
    }
    for name, words in expected.items():
        r = by_name[name]
        assert r["ok"] is False and r["sides"] == [] and r["error"] and r["eligible"] is None, name
        assert words in r["error"], (name, r["error"])
        assert "internal error" not in r["error"], (name, r["error"])


def test_all_good_inputs_exit_zero_and_human_output(b4_bundle, inputs):
    proc = run_cli("predict", *map(str, inputs["good"]), "--model", str(b4_bundle), "--backend", "onnxruntime")
    assert proc.returncode == 0, proc.stderr
    assert "UNTRAINED" not in proc.stderr and "backend: onnxruntime (CPU)" in proc.stderr
    assert proc.stdout.count("patient right:") == 3 and proc.stdout.count("patient left:") == 3


def test_flipped_dicom_heatmap_peaks_land_on_the_right_sides(b4_bundle, tmp_path):
    """Patient left is on the image's left in an R\\F image; each side's heatmap peak must lie in
    that side's half of the stored image."""
    img = phantom(4401, 3, size=(900, 600))[0]
    path = write_dicom(tmp_path / "rf.dcm", img, PatientOrientation=["R", "F"])
    proc = run_cli("predict", str(path), "--model", str(b4_bundle), "--json", "--backend", "onnxruntime")
    r = json.loads(proc.stdout)
    mid = r["metadata"]["midline_x"]
    peaks = {s["side"]: s["heatmap_peak"][0] for s in r["sides"]}
    assert r["metadata"]["image_left_is_patient"] == "left"
    assert peaks["left"] < mid < peaks["right"]


def test_tensorrt_backend_absent_is_a_clear_message(b4_bundle, inputs):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    proc = run_cli("predict", str(inputs["good"][0]), "--model", str(b4_bundle), "--backend", "tensorrt")
    assert proc.returncode == 2
    assert "tensorrt" in proc.stderr.lower() and "not installed" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_model_is_a_clear_message(inputs, tmp_path):
    proc = run_cli("predict", str(inputs["good"][0]), "--model", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "not a model bundle" in proc.stderr and "Traceback" not in proc.stderr


def test_tampered_onnx_is_refused(b4_bundle, inputs, tmp_path):
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(b4_bundle, copy)
    with open(copy / "model.onnx", "r+b") as fh:
        fh.seek(-100, 2)
        fh.write(b"\0" * 10)
    proc = run_cli("predict", str(inputs["good"][0]), "--model", str(copy), "--backend", "onnxruntime")
    assert proc.returncode == 2 and "does not match its manifest" in proc.stderr


def _folder_with_other_files(root):
    folder = root / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(phantom(4403, 0, size=(800, 500))[0]).save(folder / "sub" / "good.png")
    write_dicom(folder / "good.dcm", phantom(4403, 1, size=(900, 600))[0].astype(np.uint16) * 16, PatientOrientation=["L", "F"])
    (folder / "labels.csv").write_text("id,label\n1,0\n")
    (folder / "notes.gz").write_bytes(b"\x1f\x8b\x08" + bytes(100))
    (folder / ".DS_Store").write_bytes(b"\0" * 10)
    (folder / "empty").write_bytes(b"")
    (folder / "DICOMDIR").write_bytes((folder / "good.dcm").read_bytes()[:400])
    return folder


def test_folder_expansion_lists_what_it_skips(tmp_path):
    import io

    from hipcad.runtime.predict import expand_inputs, report_skipped

    folder = _folder_with_other_files(tmp_path)
    skipped: list = []
    assert expand_inputs([str(folder)], skipped) == [folder / "good.dcm", folder / "sub" / "good.png"]
    reasons = {path.name: reason for path, reason in skipped}
    assert set(reasons) == {"labels.csv", "notes.gz", ".DS_Store", "empty", "DICOMDIR"}
    assert reasons["notes.gz"].startswith("a gzip-compressed file") and reasons["empty"] == "empty file"
    assert reasons["labels.csv"].startswith("not a DICOM, JPEG or PNG")
    stream = io.StringIO()
    report_skipped(skipped, verbose=False, stream=stream)
    assert stream.getvalue().count("\n") == 1 and "5 file(s)" in stream.getvalue() and "-v lists them" in stream.getvalue()
    stream = io.StringIO()
    report_skipped(skipped, verbose=True, stream=stream)
    assert all(f"{folder / name}" in stream.getvalue() for name in reasons)
    # files named on the command line are always read (and reported), whatever they hold
    assert expand_inputs([str(folder / "labels.csv")], skipped) == [folder / "labels.csv"]


def test_predict_on_a_folder_says_what_it_skipped_and_nothing_else(tmp_path):
    folder = _folder_with_other_files(tmp_path)
    proc = run_cli("predict", "--json", str(folder))
    names = [json.loads(line)["input"].rsplit("/", 1)[1] for line in proc.stdout.splitlines()]
    assert names == ["good.dcm", "good.png"] and proc.returncode == 0, proc.stderr
    stderr = [line for line in proc.stderr.splitlines() if line.strip()]
    assert all(line.startswith(("model:", "note:")) for line in stderr), stderr
    assert sum("5 file(s) in the folder(s) given were skipped" in line for line in stderr) == 1
    verbose = run_cli("predict", "-v", str(folder))
    assert "labels.csv" in verbose.stderr and "notes.gz" in verbose.stderr and "DICOMDIR" in verbose.stderr
