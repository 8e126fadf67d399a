"""The decoded radiograph: display-ready 8-bit pixels plus the metadata that matters."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Metadata keys every decoder fills (value None where the source has no such field).
METADATA_KEYS = (
    "sop_instance_uid",
    "study_instance_uid",
    "series_instance_uid",
    "patient_orientation",  # e.g. "L\\F"; None when absent
    "image_laterality",
    "modality",
    "body_part",
    "view_position",
    "photometric_interpretation",
    "transfer_syntax",
    # for the eligibility check (DICOM only; None for JPEG / PNG and where the file has no such value)
    "sop_class_uid",  # SOP Class UID, else the file meta's Media Storage SOP Class UID
    "image_type",  # Image Type values joined with a backslash, e.g. "ORIGINAL\\PRIMARY"
    "presentation_intent_type",  # "FOR PRESENTATION" | "FOR PROCESSING"
    "number_of_frames",  # int (1 for a single-frame image)
    "laterality",  # Laterality (0020,0060) of the series: "R" | "L"
    "pixel_spacing_mm",  # [row, column] spacing in mm: Imager Pixel Spacing, else Pixel Spacing
    "samples_per_pixel",  # int: 1 grey or palette, 3 colour
)

# Patient-identifying fields: kept for display on the kiosk (always escaped there), never logged.
# The patient's age is here, not in the metadata: PS3.15 Annex E removes it in the basic
# de-identification profile (with the study date it narrows down the birth date).
PATIENT_KEYS = ("patient_name", "patient_id", "patient_birth_date", "study_date", "accession_number", "patient_age")


@dataclass
class Radiograph:
    """A radiograph ready for preprocessing.

    ``pixels`` is a 2-D uint8 array with bone bright (MONOCHROME2 sense), after the modality
    LUT, the VOI LUT / window and any MONOCHROME1 inversion. It may be a reduced-resolution
    decode of the stored image (``scale`` < 1); ``original_shape`` is (rows, columns) as stored.

    ``colour``: for a colour source (DICOM RGB / YBR / palette, colour JPEG / PNG), the colour
    statistics measured before the grey conversion (:func:`~hipcad.runtime.imaging.colour.colour_content`);
    None for a grey source.
    """

    pixels: np.ndarray
    original_shape: tuple[int, int]
    source_format: str  # "dicom" | "jpeg" | "png"
    metadata: dict = field(default_factory=dict)
    patient: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: colour statistics measured before the grey conversion (colour sources only; else None)
    colour: dict | None = None

    def __post_init__(self) -> None:
        if self.pixels.ndim != 2 or self.pixels.dtype != np.uint8:
            raise ValueError(f"Radiograph.pixels must be 2-D uint8, got {self.pixels.dtype} {self.pixels.shape}")
        for key in METADATA_KEYS:
            self.metadata.setdefault(key, None)

    @property
    def scale(self) -> float:
        """Decoded width / stored width."""
        return self.pixels.shape[1] / self.original_shape[1]
