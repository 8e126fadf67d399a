"""Is this image what the model is for? Decided after decoding, before inference, for every
input; an image that is not gets no verdict (``eligible: false`` and the reasons, in words a
radiographer understands), which is an answer, not a failure.

The checks and their parameters come from the bundle's intended use
(:mod:`hipcad.runtime.model.intended_use`); each leaves ``checks[name] = {"passed", "value"}``:

metadata (passed, value None, when the field is absent: JPEG / PNG carry none)
  modality, sop_class, image_type, presentation_intent, frames, body_part, view, laterality
  (a single side), field_of_view (columns x pixel spacing), age (Patient's Age)
always
  colour    the colour content the decoder measured before its grey conversion: a photograph or a
            colour-coded image is refused, grey stored as RGB passes, a one-hue tint passes with a
            warning
  size      stored rows and columns
  midline   confidence of the pelvic midline (:mod:`.midline`); low warns, very low refuses
  aspect    proportions of the exposed field
  content   a bilateral AP pelvis (:mod:`.pelvis`): two femoral heads mirrored about the midline,
            a femoral shaft below each, the obturator foramina, and the overall layout against the
            bundle's template. A view with one hip fails here and is refused (hipcad does not score
            a single hip: the model was made for halves of an AP pelvis).

Every threshold was set on synthetic phantoms and borrowed negatives; the README says what that
means for real radiographs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from hipcad.runtime.imaging.radiograph import Radiograph
from hipcad.runtime.inference.midline import Midline
from hipcad.runtime.inference.pelvis import load_template, pelvis_evidence
from hipcad.runtime.inference.sides import image_left_side
from hipcad.runtime.model.intended_use import CR_IMAGE, DX_PRESENTATION, SECONDARY_CAPTURE

_SOP_NAMES = {
    CR_IMAGE: "CR image",
    DX_PRESENTATION: "DX image for presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX image for processing (raw detector data)",
    SECONDARY_CAPTURE: "secondary capture",
    "1.2.840.10008.5.1.4.1.1.2": "CT image",
    "1.2.840.10008.5.1.4.1.1.2.1": "enhanced CT image",
    "1.2.840.10008.5.1.4.1.1.4": "MR image",
    "1.2.840.10008.5.1.4.1.1.4.1": "enhanced MR image",
    "1.2.840.10008.5.1.4.1.1.6.1": "ultrasound image",
    "1.2.840.10008.5.1.4.1.1.3.1": "ultrasound multi-frame image",
    "1.2.840.10008.5.1.4.1.1.20": "nuclear medicine image",
    "1.2.840.10008.5.1.4.1.1.128": "PET image",
    "1.2.840.10008.5.1.4.1.1.66.4": "segmentation",
    "1.2.840.10008.5.1.4.1.1.481.1": "RT image",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT dose",
    "1.2.840.10008.5.1.4.1.1.1.2": "mammography image",
    "1.2.840.10008.5.1.4.1.1.1.3": "intra-oral X-ray image",
    "1.2.840.10008.5.1.4.1.1.12.1": "X-ray angiography image",
    "1.2.840.10008.5.1.4.1.1.12.2": "X-ray fluoroscopy image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "photograph (VL photographic image)",
    "1.2.840.10008.5.1.4.1.1.104.1": "encapsulated PDF",
}

_MODALITY_NAMES = {
    "CT": "a CT scan", "MR": "an MR scan", "US": "an ultrasound image", "NM": "a nuclear medicine image",
    "PT": "a PET image", "SEG": "a segmentation", "RTDOSE": "a radiotherapy dose map", "RTIMAGE": "a radiotherapy image",
    "MG": "a mammogram", "XA": "an angiogram", "RF": "a fluoroscopy image", "XC": "a photograph",
    "OT": "an 'other' image", "IO": "an intra-oral X-ray", "PX": "a panoramic dental X-ray", "SR": "a report",
}


def _age_years(patient: dict) -> float | None:
    """Patient's Age (``081Y``, ``006M``...) in years; it is patient data: never shown or logged
    beyond the check's own value."""
    age = patient.get("patient_age")
    if age:
        m = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", str(age).upper())
        if m:
            n, unit = int(m.group(1)), m.group(2)
            return {"D": n / 365.25, "W": n * 7 / 365.25, "M": n / 12.0, "Y": float(n)}[unit]
    return None


def _letters(text: str) -> str:
    return "".join(ch for ch in str(text).upper() if ch.isalpha())


def _shown(value) -> str:
    """``value`` quoted if it is a well-formed code string (upper case, digits, space, underscore,
    at most 16 characters), else a neutral word: it may be hostile, or a patient's name."""
    v = str(value).strip()
    ok = 0 < len(v) <= 16 and all(ch.isupper() or ch.isdigit() or ch in " _" for ch in v)
    return f"'{v}'" if ok else "an unexpected value"


def _side_words(side: str, image_left_is: str) -> str:
    """'the image's left side (the patient's right)'."""
    if side == "image_left":
        return f"the image's left side (the patient's {image_left_is})"
    other = "left" if image_left_is == "right" else "right"
    return f"the image's right side (the patient's {other})"


@dataclass
class Eligibility:
    """The answer to "is this image what the model is for?"."""

    eligible: bool
    reasons: list[str] = field(default_factory=list)  # why not, in words a radiographer understands
    warnings: list[str] = field(default_factory=list)  # noted, not blocking
    checks: dict = field(default_factory=dict)  # name -> {"passed", "value"}

    def to_json(self) -> dict:
        return {"reasons": self.reasons, "warnings": self.warnings, "checks": self.checks}


def content_checks(midline: Midline, cc: dict, template: dict | None,
                   image_left_is: str | None = None) -> tuple[dict, list[str]]:
    """The content check of an AP pelvis about ``midline`` with the thresholds ``cc`` (the intended
    use's ``content``): per sub-check ``(passed, value)``, and the reasons of those that failed. The
    layout sub-check needs ``template``; without one it is left out (``hipcad layout-template`` uses
    the rest to choose the images it builds a template from)."""
    image_left_is = image_left_is or image_left_side(None)[0]
    content_reasons: list[str] = []
    ev = pelvis_evidence(midline, template)
    sub: dict = {}
    if not ev.get("found"):
        content_reasons.append(f"no pelvis found ({ev.get('why', 'no content')})")
    else:
        S = float(midline.details.get("symmetry", 0.0))
        sub["symmetry"] = (S >= cc["min_symmetry"], round(S, 3))
        if not sub["symmetry"][0]:
            content_reasons.append("the image has no left-right mirror symmetry, as an AP pelvis has")
        hc = ev["head_contrast"]
        rk = ev["head_brightness_rank"]
        for side in ("image_left", "image_right"):
            ok = hc[side] >= cc["min_head_contrast"] and rk[side] >= cc["min_head_brightness_rank"]
            sub[f"head_{side}"] = (ok, {"contrast": round(hc[side], 3), "brightness_rank": round(rk[side], 3)})
            if not ok:
                content_reasons.append(f"no femoral head found on {_side_words(side, image_left_is)}")
        mm, dh = ev["mirror_mismatch"], ev["height_difference"]
        ok = mm <= cc["max_head_mirror_mismatch"] and dh <= cc["max_head_height_difference"]
        sub["heads_mirrored"] = (ok, {"distance_mismatch": round(mm, 3), "height_difference": round(dh, 3)})
        if not ok:
            content_reasons.append("the two femoral-head candidates are not at mirrored positions about the midline")
        sep, hgt = ev["separation"], ev["height"]
        ok = cc["head_separation"][0] <= sep <= cc["head_separation"][1] and cc["head_height"][0] <= hgt <= cc["head_height"][1]
        sub["heads_placed"] = (ok, {"separation": round(sep, 3), "height": round(hgt, 3)})
        if not ok:
            content_reasons.append("the femoral-head candidates are not where the hips of an AP pelvis are")
        for side in ("image_left", "image_right"):
            s = ev["shafts"][side]
            lo, hi = cc["shaft_to_head_distance"]
            ok = (s["contrast"] >= cc["min_shaft_contrast"] and lo <= s["distance_ratio"] <= hi
                  and s["continuity"] >= cc["min_shaft_continuity"])
            sub[f"shaft_{side}"] = (ok, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()})
            if not ok:
                content_reasons.append(f"no femoral shaft found below the hip on {_side_words(side, image_left_is)}")
        ob = ev["obturator_contrast"]
        ok = min(ob.values()) >= cc["min_obturator_contrast"]
        sub["obturator_foramina"] = (ok, {k: round(v, 3) for k, v in ob.items()})
        if not ok:
            content_reasons.append("no obturator foramina (the two openings of the pelvic ring) found")
        if template is not None:
            ls, cov = ev["layout_score"], ev["layout_coverage"]
            ok = ls >= cc["min_layout_score"] and cov >= cc["min_layout_coverage"]
            sub["layout"] = (ok, {"score": round(ls, 3), "coverage": round(cov, 3)})
            if not ok:
                content_reasons.append(
                    f"the overall picture does not match an AP pelvis (layout score {ls:.2f}, "
                    f"at least {cc['min_layout_score']:.2f} needed)")
    return sub, content_reasons


def assess(radiograph: Radiograph, intended_use: dict, midline: Midline | None) -> Eligibility:
    """Eligibility of one decoded radiograph for the model's ``intended_use``.

    ``midline`` is :func:`~.midline.find_midline` of the radiograph's pixels (the pipeline finds it
    once, for this and for the split); None when the image is too small to look for one.
    """
    iu = intended_use
    md = radiograph.metadata
    rows, cols = radiograph.original_shape
    checks: dict = {}
    reasons: list[str] = []
    warnings: list[str] = []

    def check(name: str, passed: bool, value, reason: str | None = None) -> None:
        checks[name] = {"passed": bool(passed), "value": value}
        if not passed and reason:
            reasons.append(reason)

    # ---- DICOM metadata (absent fields pass: JPEG / PNG carry none)
    modality = (md.get("modality") or "").strip().upper() or None
    if modality is not None:
        ok = modality in iu["modalities"]
        what = _MODALITY_NAMES.get(modality, f"modality {_shown(modality)}")
        check("modality", ok, modality,
              f"this is {what} (DICOM Modality {_shown(modality)}); the model reads only "
              f"{' / '.join(iu['modalities'])} radiographs")
    else:
        check("modality", True, None)
    sop = (md.get("sop_class_uid") or "").strip() or None
    if sop is not None:
        ok = sop in iu["sop_classes"]
        check("sop_class", ok, sop,
              f"the file is a {_SOP_NAMES.get(sop, 'DICOM object of SOP class ' + _shown(sop))}, "
              "not a CR / DX radiograph")
    else:
        check("sop_class", True, None)
    image_type = md.get("image_type")
    if image_type:
        values = [v.strip().upper() for v in str(image_type).split("\\")]
        bad = [v for v in values if v in iu["excluded_image_types"]]
        check("image_type", not bad, str(image_type),
              f"Image Type says {_shown(bad[0])} (a {bad[0].lower()} image), not a plain radiograph" if bad else None)
    else:
        check("image_type", True, None)
    intent = (md.get("presentation_intent_type") or "").strip().upper() or None
    if intent is not None:
        ok = intent not in iu["excluded_presentation_intents"]
        check("presentation_intent", ok, intent,
              "the image is raw detector data (FOR PROCESSING), not the processed image meant for viewing")
    else:
        check("presentation_intent", True, None)
    frames = md.get("number_of_frames")
    if frames is not None:
        try:
            nf = int(frames)
        except (TypeError, ValueError):
            nf = 1
        check("frames", nf <= iu["max_frames"], nf,
              f"the file holds {nf} frames (a cine loop or a volume), not a single radiograph")
    else:
        check("frames", True, None)
    body = md.get("body_part")
    if body:
        ok = any(w in _letters(body) for w in iu["body_parts"])
        check("body_part", ok, str(body), f"Body Part Examined is {_shown(body)}, not a pelvis or hip")
    else:
        check("body_part", True, None)
    view = md.get("view_position")
    if view and str(view).strip():
        ok = str(view).strip().upper() in iu["views"]
        check("view", ok, str(view), f"View Position is {_shown(view)}, not {' or '.join(iu['views'])}")
    else:
        check("view", True, None)
    lat = None
    for key in ("image_laterality", "laterality"):
        v = (md.get(key) or "").strip().upper()
        if v:
            lat = v
            break
    if lat is not None:
        ok = lat not in iu["refused_lateralities"]
        side = {"R": "right", "L": "left"}.get(lat, lat)
        check("laterality", ok, lat,
              f"the image is labelled as showing only the patient's {side} side (laterality {lat}); "
              "the model needs both hips on one AP pelvis image")
    else:
        check("laterality", True, None)
    spacing = md.get("pixel_spacing_mm")
    if spacing:
        try:
            sp_col = float(spacing[1] if isinstance(spacing, (list, tuple)) else str(spacing).split("\\")[-1])
            width_mm = cols * sp_col
        except (TypeError, ValueError, IndexError):
            width_mm = None
        if width_mm and width_mm > 0:
            lo, hi = iu["field_width_mm"]
            check("field_of_view", lo <= width_mm <= hi, round(width_mm, 1),
                  f"the image is {width_mm / 10:.0f} cm wide; an AP pelvis with both hips is "
                  f"{lo / 10:.0f}-{hi / 10:.0f} cm wide")
        else:
            check("field_of_view", True, None)
    else:
        check("field_of_view", True, None)
    age = _age_years(radiograph.patient)
    if age is not None:
        check("age", age >= iu["min_age_years"], round(age, 1),
              f"the patient is {age:.0f} years old; the model was trained on adults aged "
              f"{iu['min_age_years']} and older")
    else:
        check("age", True, None)

    # ---- colour (measured by the decoder before the grey conversion)
    colour = radiograph.colour
    if colour:
        cfg = iu["colour"]
        frac = float(colour.get("colour_fraction", colour.get("coloured_fraction", 0.0)))
        ok = frac <= cfg["max_coloured_fraction"]
        check("colour", ok, colour,
              f"the image is in colour ({100 * frac:.0f} % of it): a photograph or a colour-coded image, "
              "not a radiograph")
        if ok and colour.get("tint"):
            warnings.append("the image is tinted (one hue); it was read as grey")
        elif ok and float(colour.get("coloured_fraction", 0.0)) > 0.001:
            warnings.append("the image has a few coloured marks (annotations?); they were read as grey")
    else:
        check("colour", True, None)

    # ---- size
    ok = rows >= iu["min_rows"] and cols >= iu["min_columns"]
    check("size", ok, [int(rows), int(cols)],
          f"the image is too small ({cols} x {rows} pixels); at least {iu['min_columns']} x {iu['min_rows']} needed")

    # ---- midline and content (second line for DICOM, the only line for JPEG / PNG)
    if midline is None:
        check("midline", False, None, "the image is too small to look at")
        check("content", False, None)
        return _result(checks, reasons, warnings)
    conf, det = float(midline.confidence), midline.details
    mcfg = iu["midline"]
    check("midline", conf >= mcfg["refuse_below"], round(conf, 3),
          f"cannot find the pelvic midline (confidence {conf:.2f})")
    if mcfg["refuse_below"] <= conf < mcfg["warn_below"]:
        warnings.append(f"the pelvic midline is uncertain (confidence {conf:.2f}); check where the image was split")
    aspect = det.get("field_aspect")
    if aspect is not None:
        lo, hi = iu["aspect"]
        check("aspect", lo <= aspect <= hi, round(aspect, 2),
              f"the image's proportions ({aspect:.2f} wide per 1 high) do not fit an AP pelvis")
    cc = iu["content"]
    image_left_is, _ = image_left_side(md.get("patient_orientation"))
    sub, content_reasons = content_checks(midline, cc, load_template(cc.get("layout_template")), image_left_is)
    content_ok = not content_reasons
    checks["content"] = {
        "passed": content_ok,
        "value": {k: {"passed": bool(v[0]), "value": v[1]} for k, v in sub.items()},
    }
    if not content_ok:
        reasons.append("this does not look like an AP pelvis radiograph with both hips: " + "; ".join(content_reasons))
    return _result(checks, reasons, warnings)


def _result(checks: dict, reasons: list[str], warnings: list[str]) -> Eligibility:
    return Eligibility(all(c["passed"] for c in checks.values()), reasons, warnings, _jsonable(checks))


def _jsonable(value):
    """Check values as plain JSON types (numpy scalars and tuples turned into numbers and lists)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
