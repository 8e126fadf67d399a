"""Synthetic AP pelvis radiographs ("phantoms") with and without hip fractures.

For tests, demos, benchmarks and training the demo model. Nothing here is a patient: every
file says so (PatientName ``PHANTOM^<n>``, PatientID ``SYN<n>``, ImageComments and
DeidentificationMethod ``SYNTHETIC PHANTOM - not a patient``).

How a phantom is made
---------------------
The anatomy is a set of smooth signed-distance shapes in a patient frame in millimetres
(origin on the midline at the height of the femoral-head centres, ``u`` to the image right,
``v`` down), placed on the detector with a random scale, offset and tilt. Each bone is drawn as
the projection of a shell: a cortical rim (bright) around a trabecular core with a band-pass
texture; where bones overlap (femoral head in the acetabulum, sacrum over the ilia, ischium
over the lesser trochanter) their attenuations add up. The pelvic ring (iliac wings, sacrum
with its foramina, L4/L5, pubic rami, symphysis, obturator foramina, acetabular roofs,
teardrops, iliopectineal lines) and both proximal femora (head, neck at a neck-shaft angle of
124-136 degrees, greater and lesser trochanter, shaft with a thick cortex and a medullary
canal) sit in a soft-tissue envelope (abdomen, then two thighs) with bowel gas. This is all
drawn at a reduced resolution (at most 720 pixels across, about 0.55-0.65 mm per pixel),
then processed like a CR/DX
image (large-scale equalisation, heel effect, blur), upsampled to the full size, and the
full-resolution parts are added: fracture lines, quantum noise, the lead side marker and the
collimation edges. A look-up table maps the result to the stored values of the chosen "vendor"
(bit depth 8/10/12/14/16, gamma and S-curve, stored range and header window, MONOCHROME1/2).
A 2000-pixel-wide phantom takes about 0.15-0.2 s on one core, a 4892x4020 one about 0.6 s.

Fractures (about half of the images by default, at most one per image, random side):

* ``neck`` -- a femoral neck fracture: a thin dark irregular line across the neck (subcapital
  to basicervical, Pauwels obliquity), from barely visible to displaced: the head fragment
  rotates about the head centre (varus or valgus) and shifts, leaving a gap or an overlapping
  (impacted, sclerotic) band; some have a bright impaction band along the line.
* ``trochanteric`` -- an intertrochanteric line from the greater to the lesser trochanter,
  undisplaced or with the head-neck fragment rotated into varus.

Every random choice that is not the fracture (anatomy, position, exposure, noise, vendor
look, side marker, file format) is drawn from random streams that do not depend on whether
the image has a fracture, so :func:`make_phantom` with the same seed and index but a forced
``fracture="none"`` gives exactly the same image without the fracture; the pixels then differ
only inside the ``neck_trochanter`` region of the fractured side.

Geometry: a standard AP view has image left = patient right (PatientOrientation ``L\\F``).
About 10 % of the DICOM files are stored mirrored (PatientOrientation ``R\\F``, image left =
patient left); JPEG/PNG files are always standard. Boxes are written in the coordinates of
the stored pixels (see :mod:`hipcad.runtime.evaluation.dataset` for the folder format).

Command line: ``hipcad synth --out DIR --count N [--seed S] [--size WxH]
[--formats dicom,jpeg] [--fracture-rate 0.5]`` (:mod:`.cli`).
"""

from hipcad.runtime.synth.cases import CaseSpec, FractureSpec, sample_case
from hipcad.runtime.synth.cli import build_parser, generate, main
from hipcad.runtime.synth.formats import (
    DEFAULT_FORMAT_WEIGHTS,
    DICOM_FORMATS,
    FORMATS,
    FRACTURE_KINDS,
    SYNTHETIC_NOTE,
    parse_formats,
)
from hipcad.runtime.synth.render import Phantom, make_phantom, render
from hipcad.runtime.synth.writer import patient_id, save_preview, write_phantom

__all__ = [
    "FORMATS", "DICOM_FORMATS", "DEFAULT_FORMAT_WEIGHTS", "FRACTURE_KINDS", "SYNTHETIC_NOTE", "CaseSpec", "FractureSpec",
    "Phantom", "sample_case", "render", "make_phantom", "write_phantom", "generate", "save_preview", "parse_formats",
    "patient_id", "build_parser", "main",
]
