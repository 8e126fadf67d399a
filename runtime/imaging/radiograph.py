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
)

# Patient-identifying fields: kept for display on the kiosk (always escaped there), never logged.
PATIENT_KEYS = ("patient_name", "patient_id", "patient_birth_date", "study_date", "accession_number")


@dataclass
class Radiograph:
    """A radiograph ready for preprocessing.

    ``pixels`` is a 2-D uint8 array with bone bright (MONOCHROME2 sense), after the modality
    LUT, the VOI LUT / window and any MONOCHROME1 inversion. It may be a reduced-resolution
    decode of the stored image (``scale`` < 1); ``original_shape`` is (rows, columns) as stored.
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
