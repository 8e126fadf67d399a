"""``hipcad layout-template BUNDLE FOLDER [--images N]`` on a copy of the demo bundle: the template
is rebuilt from the radiographs given, the manifest records its new sha256 and calibration, the
bundle is signed again (the run's test key, HIPCAD_SIGNING_KEY from tests/conftest.py) and still
loads and reads a phantom as eligible. Too few usable radiographs: a clear error, the bundle untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hipcad.runtime.errors import HipcadError
from hipcad.runtime.model import intended_use as iu
from hipcad.runtime.model.bundle import DEFAULT_BUNDLE, load_bundle
from tests.helpers import phantom, run_cli

SEED = 27182  # used by no other test
COUNT = 24  # at least 20 images with two femoral heads are needed


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("layout-phantoms") / "synth"
    proc = run_cli("synth", "--out", str(out), "--count", str(COUNT), "--seed", str(SEED), "--size", "640x480",
                   "--formats", "jpeg", "-q", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.rglob("*.jpg"))) == COUNT
    return out


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory, phantoms):
    """A copy of the demo bundle after ``hipcad layout-template COPY PHANTOMS``: (folder, process)."""
    bundle = tmp_path_factory.mktemp("layout-bundle") / "demo-copy"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    proc = run_cli("layout-template", str(bundle), str(phantoms), timeout=300)
    return bundle, proc


def test_the_template_is_rebuilt_recorded_and_signed(rebuilt):
    bundle, proc = rebuilt
    assert proc.returncode == 0, proc.stderr
    assert f"layout template from {COUNT} image(s)" in proc.stdout
    assert "signed" in proc.stderr
    template = bundle / iu.TEMPLATE_FILE
    assert template.read_bytes() != (DEFAULT_BUNDLE / iu.TEMPLATE_FILE).read_bytes()

    manifest = json.loads((bundle / "manifest.json").read_text())
    original = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    content = manifest["intended_use"]["content"]
    assert content["layout_template"] == iu.TEMPLATE_FILE
    assert content["layout_template_sha256"] == hashlib.sha256(template.read_bytes()).hexdigest()
    assert content["layout_template_sha256"] != original["intended_use"]["content"]["layout_template_sha256"]
    calibration = content["layout_calibration"]
    assert calibration["images"] == COUNT and "hipcad layout-template" in calibration["source"]
    assert content["min_layout_score"] == calibration["min_layout_score"]
    assert calibration["min_layout_score"] <= iu.DEFAULT_INTENDED_USE["content"]["min_layout_score"]
    assert calibration["self_score_min"] <= calibration["self_score_p0_5"] <= 1.0
    with np.load(template) as npz:  # what the eligibility check will correlate images with
        assert json.loads(str(npz["meta"]))["images"] == COUNT
        assert np.isfinite(npz["template"]).any()
    # the rest of the intended use, and the rest of the manifest, are as they were
    for key, value in original["intended_use"].items():
        if key != "content":
            assert manifest["intended_use"][key] == value, key
    changed = ("intended_use", "files")  # the signature's table of files: the template's new hash
    assert {k: v for k, v in manifest.items() if k not in changed} == {k: v for k, v in original.items() if k not in changed}
    assert manifest["files"][iu.TEMPLATE_FILE]["sha256"] == content["layout_template_sha256"]
    assert {k: v for k, v in manifest["files"].items() if k != iu.TEMPLATE_FILE} == \
        {k: v for k, v in original["files"].items() if k != iu.TEMPLATE_FILE}


def test_the_rebuilt_bundle_loads_and_still_reads_a_phantom_as_eligible(rebuilt, tmp_path):
    bundle, proc = rebuilt
    assert proc.returncode == 0, proc.stderr
    loaded = load_bundle(bundle)  # the signature covers the new manifest and template
    assert loaded.signature.verified and not loaded.signature.demo_key
    assert loaded.signature.key_id != load_bundle(DEFAULT_BUNDLE).signature.key_id
    use = loaded.intended_use
    assert Path(use["content"]["layout_template"]) == (bundle / iu.TEMPLATE_FILE).resolve()
    assert use["content"]["min_layout_score"] == loaded.manifest["intended_use"]["content"]["min_layout_score"]

    path = tmp_path / "unseen.jpg"  # a phantom of the same seed the template was not built from
    Image.fromarray(phantom(SEED, COUNT + 5, size=(800, 640))[0]).save(path, quality=95)
    proc = run_cli("predict", str(path), "--model", str(bundle), "--json", "--backend", "onnxruntime", timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["ok"] is True and record["eligible"] is True, record["eligibility"]
    assert record["eligibility"]["checks"], record["eligibility"]
    assert len(record["sides"]) == 2


def test_a_tampered_template_is_refused_after_the_rebuild(rebuilt, tmp_path):
    bundle, proc = rebuilt
    assert proc.returncode == 0, proc.stderr
    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy)
    shutil.copyfile(DEFAULT_BUNDLE / iu.TEMPLATE_FILE, copy / iu.TEMPLATE_FILE)  # the old template back
    loaded = load_bundle(copy)  # the template is checked where it is used: before any image is read
    with pytest.raises(HipcadError, match=r"the layout template pelvis_layout\.npz does not match its manifest"):
        loaded.intended_use


def test_a_folder_without_usable_radiographs_is_refused_and_the_bundle_left_alone(tmp_path):
    bundle = tmp_path / "demo-copy"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    before = snapshot(bundle)
    folder = tmp_path / "not-pelves"
    folder.mkdir()
    (folder / "notes.txt").write_text("no radiographs here\n")
    Image.fromarray(np.full((480, 640), 128, np.uint8)).save(folder / "flat.png")  # a blank exposure
    Image.fromarray(np.zeros((480, 640), np.uint8)).save(folder / "black.png")
    proc = run_cli("layout-template", str(bundle), str(folder), timeout=300)
    assert proc.returncode == 1
    assert "hipcad layout-template: only 0 image(s) looked like an AP pelvis with both hips (2 left out); at least 20 are needed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(bundle) == before
    load_bundle(bundle)  # still the demo bundle, signed as shipped


def test_too_few_images_with_the_images_option_are_refused(tmp_path, phantoms):
    bundle = tmp_path / "demo-copy"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    before = snapshot(bundle)
    proc = run_cli("layout-template", str(bundle), str(phantoms), "--images", "5", timeout=300)
    assert proc.returncode == 1
    assert "only 5 image(s) looked like an AP pelvis with both hips (0 left out); at least 20 are needed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(bundle) == before


def test_non_pelvis_images_in_the_folder_are_left_out_not_averaged_in(tmp_path):
    """Noise images among a site's pelves once passed as 'two femoral heads', went into the template
    and dropped the minimum layout score below zero, which turned the layout check off."""
    folder = tmp_path / "site"
    proc = run_cli("synth", "--out", str(folder), "--count", "24", "--seed", str(SEED), "--size", "640x480",
                   "--formats", "jpeg", "-q")
    assert proc.returncode == 0, proc.stderr
    rng = np.random.default_rng(1)
    for i in range(3):  # three stray images that are not radiographs at all
        Image.fromarray(rng.integers(0, 256, (480, 640), dtype=np.uint8)).save(folder / f"stray-{i}.png")
    bundle = tmp_path / "demo-copy"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    proc = run_cli("layout-template", str(bundle), str(folder))
    assert proc.returncode == 0, proc.stderr
    content = json.loads((bundle / "manifest.json").read_text())["intended_use"]["content"]
    assert content["layout_calibration"]["images"] == 24 and content["layout_calibration"]["left_out"] == 3
    assert content["min_layout_score"] >= 0.4, content["layout_calibration"]
