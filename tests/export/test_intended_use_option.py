"""``hipcad export --intended-use FILE.json``: the keys given replace the paper's defaults in the
manifest's ``intended_use`` (the others keep their defaults) and the eligibility check enforces
them; an unknown key, a value of the wrong type or a layout template path leaving the bundle is
refused with a message before any bundle is written (README, "The layout template")."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

from hipcad.export.layout_template import intended_use_entry
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.model import intended_use as iu
from hipcad.runtime.model.bundle import load_bundle
from tests.helpers import phantom, run_cli, write_dicom

# the cheapest export the suite makes: an untrained B0 at 64x64 without the PyTorch program
EXPORT = ("export", "--random-init", "--seed", "0", "--arch", "efficientnet_b0", "--input-size", "64", "--no-torch")


def export(tmp_path, overrides, name: str = "bundle"):
    spec = tmp_path / f"{name}.json"
    spec.write_text(overrides if isinstance(overrides, str) else json.dumps(overrides))
    out = tmp_path / name
    return out, run_cli(*EXPORT, "--intended-use", str(spec), "--out", str(out), timeout=600)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out, proc = export(tmp_path_factory.mktemp("intended-use"), {"min_age_years": 16})
    assert proc.returncode == 0, proc.stderr
    return out


def test_the_key_given_lands_in_the_manifest_and_the_others_keep_their_defaults(bundle):
    use = json.loads((bundle / "manifest.json").read_text())["intended_use"]
    assert use["min_age_years"] == 16
    defaults = iu.DEFAULT_INTENDED_USE
    assert set(use) == set(defaults)
    for key, value in defaults.items():
        if key not in ("min_age_years", "content"):
            assert use[key] == value, key
    for key, value in defaults["content"].items():
        assert use["content"][key] == value, key  # hipcad's default template, its default minimum score
    assert use["content"]["layout_template_sha256"]  # the template travels with its hash
    loaded = load_bundle(bundle)
    assert loaded.intended_use["min_age_years"] == 16
    assert loaded.intended_use["_source"] == "the bundle's manifest"


def test_the_eligibility_check_enforces_the_new_minimum_age(bundle, tmp_path):
    pixels = phantom(27183, 0, size=(800, 640))[0]  # seed used by no other test
    tags = {"PatientOrientation": ["L", "F"], "BodyPartExamined": "PELVIS", "ViewPosition": "AP"}
    aged_18 = write_dicom(tmp_path / "aged-18.dcm", pixels, PatientAge="018Y", **tags)
    aged_15 = write_dicom(tmp_path / "aged-15.dcm", pixels, PatientAge="015Y", **tags)
    proc = run_cli("predict", str(aged_18), str(aged_15), "--model", str(bundle), "--json", "--backend",
                   "onnxruntime", timeout=300)
    assert proc.returncode == 0, proc.stderr
    adult, child = (json.loads(line) for line in proc.stdout.splitlines())
    # 18 is below the paper's 20 but not below this bundle's 16
    assert adult["eligible"] is True, adult["eligibility"]
    assert adult["eligibility"]["checks"]["age"]["passed"] is True
    assert child["eligible"] is False and child["sides"] == []
    assert child["eligibility"]["checks"]["age"]["passed"] is False
    assert any("aged 16 and older" in reason for reason in child["eligibility"]["reasons"])


@pytest.mark.parametrize("overrides, words", [
    ({"min_age": 16}, "unknown intended-use key 'min_age'"),
    ({"content": {"layout_template": "../outside.npz"}}, "the layout template path '../outside.npz' leaves the bundle"),
])
def test_the_command_refuses_a_wrong_intended_use_and_writes_nothing(tmp_path, overrides, words):
    out, proc = export(tmp_path, overrides)
    assert proc.returncode == 1
    assert proc.stderr.startswith("hipcad export: ") or "\nhipcad export: " in proc.stderr
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == [f"{out.name}.json"]  # no staging folder left behind either


@pytest.mark.parametrize("text, words", [
    ("[16]", "the intended use must be a JSON object"),
    ('{"min_age_years": 16', "cannot read the intended-use file"),
])
def test_the_command_refuses_a_file_that_is_not_a_json_object(tmp_path, text, words):
    out, proc = export(tmp_path, text)
    assert proc.returncode == 1 and words in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("overrides, words", [
    ({"content": {"min_layout_scor": 0.4}}, "unknown intended-use key 'min_layout_scor'"),
    ({"min_age_years": "sixteen"}, "intended_use.min_age_years must be a int"),
    ({"min_age_years": True}, "intended_use.min_age_years must be a int"),
    ({"modalities": "CR"}, "intended_use.modalities must be a list"),
    ({"content": 0.5}, "intended_use.content must be an object"),
    ({"content": {"layout_template": "/etc/hostname"}}, "leaves the bundle"),
    ({"content": {"layout_template": "sub/../../x.npz"}}, "leaves the bundle"),
    ({"content": {"layout_template": "missing.npz"}}, "the layout template missing.npz is missing"),
])
def test_every_wrong_override_is_refused_where_the_export_writes_the_entry(tmp_path, overrides, words):
    with pytest.raises(HipcadError, match=re.escape(words)):
        intended_use_entry(tmp_path, copy.deepcopy(overrides))


def test_a_nested_override_keeps_the_other_nested_defaults(tmp_path):
    entry = intended_use_entry(tmp_path, {"content": {"min_layout_score": 0.4}, "field_width_mm": [200.0, 700.0]})
    assert entry["content"]["min_layout_score"] == 0.4
    assert entry["field_width_mm"] == [200.0, 700.0]
    for key, value in iu.DEFAULT_INTENDED_USE["content"].items():
        if key != "min_layout_score":
            assert entry["content"][key] == value, key
    assert (tmp_path / iu.TEMPLATE_FILE).read_bytes() == iu.DEFAULT_TEMPLATE.read_bytes()
    with np.load(tmp_path / iu.TEMPLATE_FILE) as npz:
        assert "template" in npz
