"""An image the model is not for still gets its DICOM results, and they say so: the SR carries a
"Not assessed by the CAD" finding with each reason as text and no probability; the SC's comments
say NOT ASSESSED."""

from __future__ import annotations

import numpy as np
from PIL import Image

from hipcad.appliance.dicom import results
from tests.helpers import write_dicom

RECORD = {
    "eligible": False, "sides": [],
    "eligibility": {"reasons": ["Body Part Examined is 'CHEST', not a pelvis or hip",
                                "this does not look like an AP pelvis radiograph with both hips"]},
    "model": {"name": "demo", "label": "demo", "trained": True, "synthetic_demo": True, "threshold": 0.5},
}


def _texts(items, out):
    for item in items:
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        if item.ValueType == "TEXT":
            out.append((name, str(item.TextValue)))
        if item.ValueType == "CODE":
            out.append((name, item.ConceptCodeSequence[0].CodeMeaning))
        if item.ValueType == "NUM":
            out.append((name, "NUM"))
        if "ContentSequence" in item:
            _texts(item.ContentSequence, out)
    return out


def test_sr_and_sc_of_an_image_not_assessed(tmp_path):
    source_path = write_dicom(tmp_path / "chest.dcm", np.full((300, 400), 90, np.uint8), Modality="DX",
                              BodyPartExamined="CHEST", PatientBirthDate="", PatientSex="", StudyDate="20261129",
                              StudyTime="120000", StudyID="1", AccessionNumber="", ReferringPhysicianName="")
    source = results.read_source(source_path)
    uids = {kind: plan for kind, plan in zip(("sc", "sr"), results.plan(["PACS@127.0.0.1:104"]))}
    sr = results.build("sr", source, tmp_path / "unused.jpg", RECORD, uids["sr"])
    items = _texts(sr.ContentSequence, [])
    assert ("Finding", "Not assessed by the CAD") in items
    assert ("Reason not assessed", RECORD["eligibility"]["reasons"][0]) in items
    assert ("Reason not assessed", RECORD["eligibility"]["reasons"][1]) in items
    assert not any(value == "NUM" for _, value in items), "no probability for an image not assessed"
    overlay = tmp_path / "overlay.jpg"
    Image.new("RGB", (400, 330), (30, 30, 30)).save(overlay)
    sc = results.build("sc", source, overlay, RECORD, uids["sc"])
    assert "NOT ASSESSED: Body Part Examined is 'CHEST'" in sc.ImageComments
