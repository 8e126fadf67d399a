"""Only the radiographs the model was made for get a verdict: every real non-radiograph in
pydicom's test files, real photographs and an MR slice from matplotlib's wheel, and synthetic
negatives (chest film, CT-like slice, colour scenes, single-hip crops, tiny and rotated
phantoms, masks, flat images) are judged not eligible, with a reason; fresh phantoms are eligible.
None of the seeds below was used to tune the check (it was tuned on seed 4242)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from hipcad.runtime.imaging.decode import decode
from hipcad.runtime.inference.eligibility import assess
from hipcad.runtime.inference.midline import midline_of
from hipcad.runtime.model.bundle import load_bundle
from tests.helpers import phantom, run_cli, write_dicom
from tests.runtime.inference import negatives

SEED = 61027  # fresh: not a tuning, training or evaluation seed of the project


def judge(path):
    """The device's own decision for one file: decode as the pipeline does, find the midline, assess."""
    radiograph = decode(path, min_side=1024)
    midline = midline_of(radiograph.pixels)
    return assess(radiograph, load_bundle().intended_use, midline)


def pydicom_test_files() -> str:
    import pydicom.data

    return os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")


def test_no_pydicom_test_file_is_eligible(tmp_path):
    """pydicom's real test files (CT, MR, US, NM, SEG, RT dose, colour secondary captures, tiny CRs,
    odd encodings) through the real command: each gets an answer or a clear error, none a verdict."""
    proc = run_cli("predict", pydicom_test_files(), "--json", "--backend", "onnxruntime", timeout=900)
    assert "Traceback" not in proc.stdout + proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assessed = [r for r in results if r["ok"]]
    assert len(assessed) >= 40, "most of pydicom's image files decode"
    for r in assessed:
        assert r["eligible"] is False and r["sides"] == [], r["input"]
        assert r["eligibility"]["reasons"], r["input"]
        assert "midline_confidence" in r["metadata"]
    for r in results:
        assert r["ok"] or r["error"], r["input"]


def negative_files(folder):
    """(kind, path) of the synthetic and borrowed negatives, written as users would send them."""
    out = []

    def save(kind, name, image, **dicom_tags):
        path = folder / name
        if dicom_tags:
            write_dicom(path, np.asarray(image), **dicom_tags)
        else:
            image.save(path, quality=90) if name.endswith(".jpg") else image.save(path)
        out.append((kind, path))

    for name, image in negatives.matplotlib_samples().items():
        save("matplotlib sample", name.replace(" ", "_").split(".")[0] + ".jpg", image)
    chest = negatives.chest_film(SEED)
    save("chest film", "chest.jpg", Image.fromarray(chest))
    save("chest film DX", "chest.dcm", chest, Modality="DX", BodyPartExamined="CHEST", ViewPosition="PA")
    save("chest film claiming to be a pelvis", "chest_as_pelvis.dcm", chest, Modality="DX", BodyPartExamined="PELVIS",
         ViewPosition="AP", PatientOrientation=["L", "F"])
    ct = negatives.ct_pelvis_slice(SEED)
    save("CT-like slice", "ct.jpg", negatives.upscaled(Image.fromarray(ct)))
    save("CT-like slice, DICOM CT", "ct.dcm", negatives.upscaled(Image.fromarray(ct)), Modality="CT")
    for k in range(2):
        save("colour scene", f"scene{k}.jpg", negatives.colour_scene(SEED + k))
    pixels, ph = phantom(SEED, 1)
    cut = round(ph.midline_x)
    save("single hip (image left)", "hip_left.jpg", Image.fromarray(np.ascontiguousarray(pixels[:, :cut])))
    save("single hip (image right)", "hip_right.jpg", Image.fromarray(np.ascontiguousarray(pixels[:, cut:])))
    save("single hip, DICOM claiming a pelvis", "hip.dcm", np.ascontiguousarray(pixels[:, cut:]), Modality="DX",
         BodyPartExamined="PELVIS", ViewPosition="AP")
    save("tiny phantom", "tiny.png", Image.fromarray(pixels).resize((64, 51)))
    save("rotated phantom", "rot90.jpg", Image.fromarray(pixels).rotate(90, expand=True))
    save("upside-down phantom", "rot180.jpg", Image.fromarray(pixels).rotate(180))
    save("mask", "mask.png", Image.fromarray(negatives.mirrored_blobs()))
    save("flat", "flat.png", Image.fromarray(np.full((800, 1000), 128, np.uint8)))
    save("noise", "noise.png", Image.fromarray(np.random.default_rng(SEED).integers(0, 256, (800, 1000), dtype=np.uint8)))
    save("3 x 3", "three.png", Image.fromarray(np.full((3, 3), 200, np.uint8)))
    save("1 x 100", "one_row.png", Image.fromarray(np.full((1, 100), 200, np.uint8)))
    save("2000 x 2", "two_cols.png", Image.fromarray(np.full((2000, 2), 200, np.uint8)))
    return out


@pytest.fixture(scope="module")
def negative_set(tmp_path_factory):
    return negative_files(tmp_path_factory.mktemp("negatives"))


def test_negatives_are_not_eligible_and_say_why(negative_set):
    kinds = {kind for kind, _ in negative_set}
    assert len(kinds) >= 15 and any(k == "matplotlib sample" for k in kinds)
    for kind, path in negative_set:
        verdict = judge(path)
        assert not verdict.eligible, f"{kind} ({path.name}) was judged eligible"
        assert verdict.reasons and all(isinstance(r, str) and r for r in verdict.reasons), kind


def test_single_hip_views_are_refused_as_not_showing_both_hips(negative_set):
    """hipcad never scores a single hip: the model was made for the halves of an AP pelvis."""
    files = dict((p.name, p) for _, p in negative_set)
    for name in ("hip_left.jpg", "hip_right.jpg", "hip.dcm"):
        verdict = judge(files[name])
        assert not verdict.checks["content"]["passed"], name
        assert "does not look like an AP pelvis radiograph with both hips" in " ".join(verdict.reasons), name


def test_colour_photograph_is_refused_for_its_colour(negative_set):
    photos = [p for kind, p in negative_set if kind == "matplotlib sample" and "grace_hopper" in p.name]
    if not photos:
        pytest.skip("matplotlib's sample photograph is not installed")
    verdict = judge(photos[0])
    assert not verdict.checks["colour"]["passed"] and "in colour" in verdict.reasons[0]


def test_fresh_phantoms_are_eligible(tmp_path):
    """Phantoms of a fresh seed, as DICOM (several transfer syntaxes) and JPEG, at several sizes."""
    from hipcad.runtime.synth import generate

    records = generate(tmp_path, 12, SEED, progress=False)
    for rec in records:
        verdict = judge(rec.path)
        assert verdict.eligible, (rec.file, verdict.reasons)
        assert verdict.checks["midline"]["value"] >= 0.35, rec.file


def test_dicom_metadata_refusals(tmp_path):
    pixels, _ = phantom(SEED, 2)
    base = {"Modality": "DX", "BodyPartExamined": "PELVIS", "ViewPosition": "AP", "PatientOrientation": ["L", "F"]}
    assert judge(write_dicom(tmp_path / "ok.dcm", pixels, **base)).eligible
    cases = {
        "modality": ({"Modality": "CT"}, "CT scan"),
        "body_part": ({"BodyPartExamined": "CHEST"}, "Body Part Examined is 'CHEST'"),
        "view": ({"ViewPosition": "LL"}, "View Position is 'LL'"),
        "laterality": ({"ImageLaterality": "R"}, "only the patient's right side"),
        "sop_class": ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, "CT image"),
        "image_type": ({"ImageType": ["DERIVED", "SECONDARY", "LOCALIZER"]}, "LOCALIZER"),
        "presentation_intent": ({"PresentationIntentType": "FOR PROCESSING"}, "raw detector data"),
        "age": ({"PatientAge": "012Y"}, "12 years old"),
    }
    for check, (tags, words) in cases.items():
        verdict = judge(write_dicom(tmp_path / f"{check}.dcm", pixels, **{**base, **tags}))
        assert not verdict.eligible and not verdict.checks[check]["passed"], check
        assert any(words in reason for reason in verdict.reasons), (check, verdict.reasons)


def test_predict_gives_no_verdict_on_an_ineligible_image_unless_asked_for_research(tmp_path):
    chest = write_dicom(tmp_path / "chest.dcm", negatives.chest_film(SEED), Modality="DX", BodyPartExamined="CHEST")
    proc = run_cli("predict", str(chest), "--json", "--out", str(tmp_path / "out"), "--backend", "onnxruntime")
    assert proc.returncode == 0, "not eligible is an answer, not a failure"
    r = json.loads(proc.stdout)
    assert r["ok"] and r["eligible"] is False and r["sides"] == [] and r["error"] is None
    assert "CHEST" in r["eligibility"]["reasons"][0]
    assert {"midline_x", "midline_confidence"} <= set(r["metadata"])
    assert (tmp_path / "out" / "chest.overlay.jpg").is_file(), "the overlay says NOT ASSESSED"
    human = run_cli("predict", str(chest), "--backend", "onnxruntime")
    assert "NOT ASSESSED: Body Part Examined is 'CHEST'" in human.stdout
    research = json.loads(run_cli("predict", str(chest), "--json", "--score-ineligible", "--backend", "onnxruntime").stdout)
    assert research["eligible"] is False and len(research["sides"]) == 2
