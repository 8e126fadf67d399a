"""The CAD result as DICOM, in the source study: a Secondary Capture of the heatmap overlay and a
Comprehensive SR (TID 1500 Measurement Report) with the verdict and probability per hip.

Both get their Series and SOP Instance UIDs from :func:`plan`, which the worker stores in the
outbox in the same transaction that records the result, so a rebuild after a crash (or a resend
after a PACS outage) carries the same UIDs: the PACS sees one instance, never two.
"""

from __future__ import annotations

import copy
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from hipcad.runtime.inference.verdict import score_words, verdict_words
from hipcad.runtime.model.notice import NOT_FOR_CLINICAL_USE, notice_for

SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR Storage
SOP_CLASSES = {"sc": SC_SOP_CLASS, "sr": SR_SOP_CLASS}
SERIES_NUMBERS = {"sc": 9901, "sr": 9902}
MANUFACTURER = "hipcad"

# Patient, patient-study and general-study attributes copied from the source as they are
# (values are never logged or used to build anything but these datasets).
COPIED = (
    "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDsSequence", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientComments",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "PatientAge", "PatientSize", "PatientWeight",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "ReferringPhysicianName", "StudyDescription",
)


def plan(destinations: list[str]) -> list[dict]:
    """New UIDs for the two result objects of one study (generated once, then persisted)."""
    return [{"kind": kind, "sop_class_uid": SOP_CLASSES[kind], "sop_instance_uid": str(generate_uid()),
             "series_instance_uid": str(generate_uid()), "destinations": list(destinations)}
            for kind in ("sc", "sr")]


def model_note(model: dict) -> str | None:
    """The warning a result of a demo model carries, else None."""
    notice = notice_for(model)
    return notice.banner if notice else None


def series_description(kind: str, model: dict) -> str:
    what = "hipcad CAD heatmap" if kind == "sc" else "hipcad CAD report"
    notice = notice_for(model)
    if notice:
        what = f"{what} [{notice.short} - {NOT_FOR_CLINICAL_USE}]"
    return what[:64]


def read_source(path: Path):
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)


def _verdict_text(record: dict) -> str:
    sides = record.get("sides", [])
    if record.get("eligible") is False and not sides:
        return "NOT ASSESSED: " + "; ".join((record.get("eligibility") or {}).get("reasons", []))
    text = "; ".join(f"patient {s['side']} hip: {verdict_words(s['fracture'])} "
                     f"({score_words(s['probability'], bool(s.get('calibrated')))})" for s in sides)
    if record.get("eligible") is False:
        text = "NOT ELIGIBLE, scored for research only: " + text
    return text


def _copy_study(dst, src) -> None:
    for keyword in COPIED:
        if keyword in src:
            dst[keyword] = copy.deepcopy(src[keyword])
    dst.SpecificCharacterSet = "ISO_IR 192"  # names are held as text; UTF-8 encodes any of them


def build_sc(source, overlay: Path, record: dict, uids: dict):
    """The overlay image (RGB, burned-in annotation) as a Secondary Capture in the source study."""
    import highdicom as hd
    import numpy as np
    from PIL import Image

    with Image.open(overlay) as image:
        lossy = image.format == "JPEG"
        pixels = np.asarray(image.convert("RGB"))
    model = record.get("model") or {}
    orientation = [str(v) for v in source.get("PatientOrientation", [])]
    ds = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids["series_instance_uid"],
        series_number=SERIES_NUMBERS["sc"],
        sop_instance_uid=uids["sop_instance_uid"],
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),  # replaced below by the source's own value (or left empty)
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    _copy_study(ds, source)
    # the overlay keeps the stored image's orientation: the source's value holds, whatever its form
    ds.PatientOrientation = orientation if len(orientation) == 2 else None
    ds.Modality = "OT"
    ds.BurnedInAnnotation = "YES"
    ds.SeriesDescription = series_description("sc", model)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    if lossy:  # the overlay file is a JPEG: PS3.3 C.7.6.1.1.5 - a derived image keeps the flag
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.DerivationDescription = f"hipcad Grad-CAM heatmap over the source radiograph; model {model.get('name', '?')}"[:1024]
    note = model_note(model)
    ds.ImageComments = (f"CAD output (decision support only). {_verdict_text(record)}. "
                        f"Model: {model.get('label', '?')}." + (f" {note}." if note else ""))[:10240]
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ref.SpatialLocationsPreserved = "NO"  # resized, with a heatmap and text burned in
    ds.SourceImageSequence = [ref]
    ds.ConversionType = "WSD"
    return ds


def build_sr(source, record: dict, uids: dict):
    """Verdict and probability per hip as a Comprehensive SR (TID 1500) in the source study."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    model = record.get("model") or {}
    note = model_note(model)
    parameters = [f"operating point: {model.get('operating_point', 'default')}",
                  f"decision threshold: {model.get('threshold')}",
                  f"calibration: temperature {model.get('temperature')}" if model.get("calibrated") else "uncalibrated score"]
    if note:
        parameters.append(note)
    algorithm = hd.sr.AlgorithmIdentification(name=str(model.get("name") or "hipcad")[:64],
                                              version=str(model.get("version") or model.get("label") or "unknown")[:64],
                                              parameters=parameters)
    hip = hd.sr.CodedConcept("24136001", "SCT", "Hip joint structure")
    laterality = {"right": codes.SCT.Right, "left": codes.SCT.Left}
    fracture = hd.sr.CodedConcept("72704001", "SCT", "Fracture")
    # a calibrated bundle's number is a probability; an uncalibrated one's is only a score
    probability = hd.sr.CodedConcept("FXPROB", "99HIPCAD", "Probability of fracture")
    score = hd.sr.CodedConcept("FXSCORE", "99HIPCAD", "Fracture score (uncalibrated)")
    finding = hd.sr.CodedConcept("121071", "DCM", "Finding")
    suspected = hd.sr.CodedConcept("FXSUSP", "99HIPCAD", "Fracture suspected")
    cleared = hd.sr.CodedConcept("FXNONE", "99HIPCAD", "No fracture detected")
    source_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
    groups = []
    if record.get("eligible") is False:
        groups.append(_not_assessed_group(record, algorithm, finding, source_image))
    for side in record.get("sides", []):
        site = hd.sr.FindingSite(anatomic_location=hip, laterality=laterality[side["side"]])
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(identifier=f"patient {side['side']} hip",
                                                         uid=str(generate_uid())),
            finding_type=fracture,
            algorithm_id=algorithm,
            finding_sites=[site],
            source_images=[source_image],
            measurements=[hd.sr.Measurement(name=probability if side.get("calibrated") else score,
                                            value=float(side["probability"]),
                                            unit=hd.sr.CodedConcept("1", "UCUM", "no units"),
                                            algorithm_id=algorithm, finding_sites=[site])],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=finding,
                                                                 value=suspected if side["fracture"] else cleared)],
        ))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=str(generate_uid(entropy_srcs=["hipcad", str(model.get("name"))])), name="hipcad",
            manufacturer_name=MANUFACTURER, model_name=str(model.get("name") or "hipcad")[:64]),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("HIPCAD", "99HIPCAD", "Hip fracture CAD of an AP pelvis radiograph"),
        imaging_measurements=groups,
    )
    ds = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=uids["series_instance_uid"],
        series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=uids["sop_instance_uid"],
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # a CAD output is never a verified final report
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    _copy_study(ds, source)
    ds.SeriesDescription = series_description("sr", model)
    return ds


def _not_assessed_group(record: dict, algorithm, finding, source_image):
    """The image was not one the model is for: a group that says so, with each reason as text."""
    import highdicom as hd

    not_assessed = hd.sr.CodedConcept("NOTASSESSED", "99HIPCAD", "Not assessed by the CAD")
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="image eligibility", uid=str(generate_uid())),
        finding_type=not_assessed,
        algorithm_id=algorithm,
        source_images=[source_image],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=finding, value=not_assessed)],
    )
    reason = hd.sr.CodedConcept("NAREASON", "99HIPCAD", "Reason not assessed")
    for text in (record.get("eligibility") or {}).get("reasons", []):
        group[0].ContentSequence.append(hd.sr.TextContentItem(name=reason, value=str(text)[:1024],
                                                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def build(kind: str, source, overlay: Path, record: dict, uids: dict):
    """The ``kind`` ("sc" or "sr") object for ``source`` (the source's header, a pydicom Dataset)."""
    if kind == "sc":
        return build_sc(source, overlay, record, uids)
    return build_sr(source, record, uids)
