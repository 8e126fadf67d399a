"""Output formats of the phantoms (DICOM transfer syntaxes, JPEG, PNG) and the constants shared by the generator."""

from __future__ import annotations

# name -> (transfer syntax UID or None for a plain image file, file suffix)
FORMATS: dict[str, tuple[str | None, str]] = {
    "dcm-explicit": ("1.2.840.10008.1.2.1", ".dcm"),  # Explicit VR Little Endian
    "dcm-rle": ("1.2.840.10008.1.2.5", ".dcm"),  # RLE Lossless
    "dcm-jpegls": ("1.2.840.10008.1.2.4.80", ".dcm"),  # JPEG-LS Lossless
    "dcm-j2k": ("1.2.840.10008.1.2.4.90", ".dcm"),  # JPEG 2000 Lossless
    "dcm-jpeg": ("1.2.840.10008.1.2.4.50", ".dcm"),  # JPEG Baseline 8-bit (lossy)
    "jpeg": (None, ".jpg"),
    "png": (None, ".png"),
}
DICOM_FORMATS = tuple(name for name in FORMATS if name.startswith("dcm-"))
# The default mix: about 70 % DICOM, 30 % JPEG. PNG only when asked for.
DEFAULT_FORMAT_WEIGHTS: dict[str, float] = {
    "dcm-explicit": 0.25,
    "dcm-rle": 0.10,
    "dcm-jpegls": 0.10,
    "dcm-j2k": 0.15,
    "dcm-jpeg": 0.10,
    "jpeg": 0.30,
}
_FORMAT_ALIASES = {
    "dicom": DICOM_FORMATS,
    "dcm": DICOM_FORMATS,
    "all": tuple(DEFAULT_FORMAT_WEIGHTS),
    "explicit": ("dcm-explicit",),
    "rle": ("dcm-rle",),
    "jpegls": ("dcm-jpegls",),
    "jpeg-ls": ("dcm-jpegls",),
    "j2k": ("dcm-j2k",),
    "jpeg2000": ("dcm-j2k",),
    "jpg": ("jpeg",),
}
FRACTURE_KINDS = ("neck", "trochanteric")
SYNTHETIC_NOTE = "SYNTHETIC PHANTOM - not a patient"
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's prefix for generated UIDs
# Aspect ratios (width / height) of real pelvis films: 4892x4020, 3451x2836, 2039x1380, 43x35 cm.
_ASPECTS = (4892 / 4020, 3451 / 2836, 2039 / 1380, 43 / 35, 4 / 3)
_LOW_RES_WIDTH = 720  # the smooth anatomy is drawn at most this wide
_LUT_SIZE = 4096

# Attenuation per millimetre (arbitrary units of the log image): soft tissue, cortical bone
# and trabecular bone (both net of the soft tissue they replace).
MU_S = 0.0042
MU_C = 0.040
MU_T = 0.0125


def parse_formats(spec: str | list[str] | tuple[str, ...] | dict | None) -> dict[str, float]:
    """Turn ``"dicom,jpeg"`` (or a list of names, or a name -> weight dict) into format weights.

    Names: the keys of :data:`FORMATS` plus the aliases ``dicom`` (every DICOM transfer
    syntax), ``all`` (the default mix), ``explicit``, ``rle``, ``jpegls``, ``j2k``, ``jpg``.
    A selected format keeps its default weight (``png``: 0.1), so ``dicom,jpeg`` is the
    default 70/30 mix.
    """
    if spec is None:
        return dict(DEFAULT_FORMAT_WEIGHTS)
    if isinstance(spec, dict):
        weights = {str(k): float(v) for k, v in spec.items()}
        unknown = [k for k in weights if k not in FORMATS]
        if unknown:
            raise ValueError(f"unknown format(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}")
    else:
        names = spec.split(",") if isinstance(spec, str) else list(spec)
        weights = {}
        for raw in names:
            name = raw.strip().lower()
            if not name:
                continue
            expanded = _FORMAT_ALIASES.get(name, (name,))
            for fmt in expanded:
                if fmt not in FORMATS:
                    raise ValueError(
                        f"unknown format {raw.strip()!r}; known: {', '.join(list(FORMATS) + list(_FORMAT_ALIASES))}"
                    )
                weights[fmt] = DEFAULT_FORMAT_WEIGHTS.get(fmt, 0.1)
    total = sum(w for w in weights.values() if w > 0)
    if not weights or total <= 0:
        raise ValueError("no output format selected")
    return {k: w / total for k, w in weights.items() if w > 0}


