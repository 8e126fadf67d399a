"""What a model is for: the intended use a bundle's manifest carries (``"intended_use"``) and
the eligibility check enforces before the network speaks.

The defaults follow the paper (Sato et al.): adult anteroposterior pelvis radiographs, CR or DX,
that show both hips. A manifest may override any key; a bundle without the entry (made before
hipcad checked eligibility) gets these defaults and hipcad's own layout template, and says so.
Paths in the manifest (the layout template) must stay inside the bundle.
"""

from __future__ import annotations

import copy
from pathlib import Path

from hipcad.runtime.errors import BundleError
from hipcad.runtime.model.files import sha256_file

#: the layout template hipcad ships (built from synthetic phantoms; see the README)
DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "pelvis_layout.npz"
TEMPLATE_FILE = "pelvis_layout.npz"  # its name inside a bundle

# SOP classes (PS3.4 B.5) a radiograph for this model may come as
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SC_MULTIFRAME_GREY_BYTE = "1.2.840.10008.5.1.4.1.1.7.2"
SC_MULTIFRAME_GREY_WORD = "1.2.840.10008.5.1.4.1.1.7.3"

DEFAULT_INTENDED_USE: dict = {
    "description": (
        "Femoral neck and trochanteric fractures on adult anteroposterior (AP) pelvis radiographs that show "
        "both hips (after Sato et al.: CR/DR AP pelvis, patients aged 20 and older)"
    ),
    "modalities": ["CR", "DX"],
    "sop_classes": [CR_IMAGE, DX_PRESENTATION, SECONDARY_CAPTURE, SC_MULTIFRAME_GREY_BYTE, SC_MULTIFRAME_GREY_WORD],
    "excluded_image_types": ["LOCALIZER", "SCOUT", "AXIAL", "REFORMATTED", "MPR", "PROJECTION IMAGE", "MIP",
                             "VOLUME", "SUBTRACTION", "DOSE", "SEGMENTATION"],
    "excluded_presentation_intents": ["FOR PROCESSING"],
    "max_frames": 1,
    "body_parts": ["PELV", "HIP", "HUEFT", "HUFT", "BECKEN", "HANCHE", "BASSIN", "CADERA", "ANCA", "BACINO"],
    "views": ["AP", "PA"],
    "refused_lateralities": ["R", "L"],
    # below this the femoral neck is a handful of pixels; real AP pelves are 1500-5000 px wide
    "min_rows": 256,
    "min_columns": 256,
    "field_width_mm": [250.0, 650.0],
    "min_age_years": 20,
    "aspect": [0.6, 2.2],
    "colour": {"max_coloured_fraction": 0.01},
    "midline": {"warn_below": 0.35, "refuse_below": 0.15},
    "content": {
        "min_symmetry": 0.10,
        "min_head_contrast": 0.08,
        "min_head_brightness_rank": 0.80,
        "max_head_mirror_mismatch": 0.30,
        "max_head_height_difference": 0.12,
        "head_separation": [0.20, 0.75],
        "head_height": [0.20, 0.85],
        "min_shaft_contrast": 0.06,
        "shaft_to_head_distance": [0.8, 2.0],
        "min_shaft_continuity": 0.5,
        "min_obturator_contrast": 0.03,
        "min_layout_score": 0.50,
        "min_layout_coverage": 0.40,
        "layout_template": TEMPLATE_FILE,
    },
}


# recorded with the template, not parameters: passed through as they are
RECORDS = ("layout_template_sha256", "layout_calibration")


def _merged(defaults: dict, overrides: dict, where: str) -> dict:
    out = copy.deepcopy(defaults)
    for key, value in overrides.items():
        if key in RECORDS:
            out[key] = value
            continue
        if key not in defaults:
            raise BundleError(f"{where}: unknown intended-use key {key!r}")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise BundleError(f"{where}: intended_use.{key} must be an object")
            out[key] = _merged(defaults[key], value, f"{where}: intended_use.{key}")
        else:
            expected = type(defaults[key])
            if expected is float and isinstance(value, int):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise BundleError(f"{where}: intended_use.{key} must be a {expected.__name__}")
            out[key] = value
    return out


def resolve(entry: dict | None, bundle_dir: Path) -> dict:
    """The intended use of the bundle in ``bundle_dir``: the manifest's ``entry`` over the defaults,
    with ``content.layout_template`` resolved to a file inside the bundle (or hipcad's default
    template for a bundle without an entry). ``_source`` says which."""
    if entry is None:
        use = copy.deepcopy(DEFAULT_INTENDED_USE)
        use["content"]["layout_template"] = str(DEFAULT_TEMPLATE)
        use["_source"] = "hipcad defaults (the bundle states no intended use)"
        return use
    if not isinstance(entry, dict):
        raise BundleError(f"bundle {bundle_dir}: intended_use must be an object")
    use = _merged(DEFAULT_INTENDED_USE, entry, f"bundle {bundle_dir}")
    name = use["content"]["layout_template"]
    template = (bundle_dir / name).resolve()
    if not template.is_relative_to(bundle_dir.resolve()) or Path(name).is_absolute():
        raise BundleError(f"bundle {bundle_dir}: the layout template path {name!r} leaves the bundle")
    if not template.is_file():
        raise BundleError(f"bundle {bundle_dir}: the layout template {name} is missing")
    expected = use["content"].get("layout_template_sha256")
    if expected and sha256_file(template) != expected:
        raise BundleError(f"bundle {bundle_dir}: the layout template {name} does not match its manifest; refusing it")
    use["content"]["layout_template"] = str(template)
    use["_source"] = "the bundle's manifest"
    return use
