"""Patient sides: the one list of them, which image half shows which side, and where each half lies.

A standard AP radiograph shows the patient's right on the image's left. PatientOrientation
(0020,0020) says when an image is mirrored; JPEG and PNG have no such tag, so the standard is
assumed (and said).
"""

from __future__ import annotations

SIDES = ("right", "left")  # patient sides; the batch order of the two halves (right hip first)


def other_side(side: str) -> str:
    return "left" if side == "right" else "right"


def image_left_side(patient_orientation: str | None) -> tuple[str, str | None]:
    """Patient side on the image's left, from PatientOrientation (0020,0020), and a note if assumed.

    The first value is the patient direction of increasing column (left to right across the
    image). Standard AP: "L" (towards the patient's left), so the image's left is the patient's
    right. "R" means the image is mirrored: the image's left is the patient's left.
    """
    standard = "right"
    if not patient_orientation:
        return standard, "no PatientOrientation: standard AP orientation assumed (image left = patient right)"
    row_direction = patient_orientation.split("\\")[0].upper()
    has_l, has_r = "L" in row_direction, "R" in row_direction
    if has_l and not has_r:
        return "right", None
    if has_r and not has_l:
        return "left", None
    return standard, (
        f"PatientOrientation {patient_orientation!r} gives no left/right direction across the image: "
        "standard AP orientation assumed (image left = patient right)"
    )


def half_spans(cut: int, cols: int, image_left_is: str) -> dict[str, tuple[int, int]]:
    """Patient side -> its column range [x0, x1) when the image is cut at column ``cut``."""
    return {image_left_is: (0, cut), other_side(image_left_is): (cut, cols)}
