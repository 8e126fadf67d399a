"""The dataset folder format read by ``hipcad evaluate`` and ``hipcad train`` (and written by ``hipcad synth``).

A dataset is a folder of radiographs plus a ``labels.csv``; the same format serves real
hospital exports and synthetic phantoms::

    DATASET/
        labels.csv            required
        regions.csv           optional
        any/sub/folders/a.dcm any image files (DICOM, JPEG, PNG); paths are relative to DATASET
        b.jpg

``labels.csv`` -- one row per *fractured* side of an image, or exactly one ``none`` row for an
image without a fracture::

    file,patient_id,side,x0,y0,x1,y1
    cases/0001.dcm,P0001,right,612,980,844,1213
    cases/0002.dcm,P0002,none,,,,
    cases/0003.jpg,P0002,left,1410,1002,1650,1188
    cases/0003.jpg,P0002,right,,,,

* ``file``: path of the image relative to the folder, ``/`` as separator (sub-folders allowed;
  no absolute paths, no ``..``). Every image listed must exist; images that are not listed are
  not part of the dataset.
* ``patient_id``: any non-empty text; all rows of one file carry the same id. Train, validation
  and test sets are split by patient (:func:`split_by_patient`), never by image.
* ``side``: the *patient* side, ``right`` or ``left`` (case-insensitive), whatever the
  orientation of the pixels, or ``none`` for an image without any fracture. A side without a
  row is not fractured. ``none`` cannot be combined with a fracture row of the same file.
* ``x0,y0,x1,y1``: the fracture box in the coordinates of the pixels as stored in that file
  (x to the right, y down, pixels, (x0, y0) the top-left corner, (x1, y1) the bottom-right
  corner, ``0 <= x0 < x1``, ``0 <= y0 < y1``; decimals allowed). All four empty when the
  location is unknown (allowed for a fracture row) and always empty on a ``none`` row.
  For a file stored mirrored (PatientOrientation ``R\\F``: image left = patient left), the box
  is where the fracture is in the stored pixels, so a patient-right fracture is on the image
  right there.
* Any further column is an **attribute** (``fracture_type``, ``displaced``, ``sex``,
  ``age_band``, ``vendor``, ``view``...): ``hipcad evaluate`` reports every figure per value of
  it (:mod:`.subgroups`). A column that is empty on every ``none`` row describes the *fracture*
  (its value on a fracture row is that side's); any other describes the *image* (all rows of a
  file must then agree, and the file's intact sides take it too). Empty means not known. Files
  without extra columns load as before; a UTF-8 byte-order mark (Excel) is accepted; blank lines
  are skipped.

``regions.csv`` (optional) -- anatomical boxes, same coordinates::

    file,side,region,x0,y0,x1,y1
    cases/0001.dcm,right,neck_trochanter,540,900,905,1290
    cases/0001.dcm,left,neck_trochanter,1380,905,1745,1290

Region ``neck_trochanter`` is the box around the femoral head, neck and greater and lesser
trochanters of that side. It is used to score where a heatmap is hot: on a non-fractured half,
heat outside this box is heat outside the femoral neck and trochanter. ``hipcad synth``
writes it for every image and both sides. Other region names are kept as they are.

Errors: an unknown or missing file, a bad side, a partial, negative or inverted box, a
duplicate row, or a ``none`` row next to a fracture row raise :class:`DatasetError` (a
``ValueError``) naming the CSV file and line.
"""

from __future__ import annotations

import csv
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

from hipcad.runtime.errors import HipcadError
from hipcad.runtime.evaluation.box import Box
from hipcad.runtime.inference.sides import SIDES, image_left_side

__all__ = [
    "LABELS_FILE",
    "REGIONS_FILE",
    "LABEL_FIELDS",
    "REGION_FIELDS",
    "SIDES",
    "NECK_TROCHANTER",
    "DatasetError",
    "Box",
    "SideLabel",
    "ImageRecord",
    "Dataset",
    "load_dataset",
    "iter_halves",
    "split_by_patient",
    "image_half",
]

LABELS_FILE = "labels.csv"
REGIONS_FILE = "regions.csv"
LABEL_FIELDS = ("file", "patient_id", "side", "x0", "y0", "x1", "y1")
REGION_FIELDS = ("file", "side", "region", "x0", "y0", "x1", "y1")
NONE_SIDE = "none"
NECK_TROCHANTER = "neck_trochanter"


class DatasetError(HipcadError, ValueError):
    """labels.csv / regions.csv is malformed or names a file that is not there."""


@dataclass(frozen=True)
class SideLabel:
    """The label of one patient side of an image: fractured or not, and where (if known)."""

    fracture: bool
    box: Box | None = None


@dataclass
class ImageRecord:
    """One image of a dataset."""

    file: str  # as written in labels.csv (relative, "/" separators)
    path: Path  # root / file
    patient_id: str
    sides: dict[str, SideLabel]  # "right" and "left", always both
    regions: dict[str, dict[str, Box]] = field(default_factory=dict)  # side -> region -> box
    line: int | None = None  # first line of the image in labels.csv
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)  # side -> extra column -> value

    @property
    def fractured(self) -> bool:
        return any(label.fracture for label in self.sides.values())

    @property
    def fractured_sides(self) -> list[str]:
        return [side for side in SIDES if self.sides[side].fracture]

    def label(self, side: str) -> SideLabel:
        return self.sides[side]

    def region(self, side: str, name: str = NECK_TROCHANTER) -> Box | None:
        return self.regions.get(side, {}).get(name)

    def attribute(self, side: str, column: str) -> str | None:
        """The value of an extra labels.csv column for one side (None when not given)."""
        return self.attributes.get(side, {}).get(column) or None


@dataclass
class Dataset:
    root: Path
    images: list[ImageRecord]
    has_regions: bool = False
    #: extra labels.csv column -> "image" (describes the radiograph) or "fracture" (a fractured side)
    attribute_levels: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.images)

    def __getitem__(self, item: int) -> ImageRecord:
        return self.images[item]

    def by_file(self, file: str) -> ImageRecord:
        for rec in self.images:
            if rec.file == file:
                return rec
        raise KeyError(file)

    def patients(self) -> dict[str, list[ImageRecord]]:
        out: dict[str, list[ImageRecord]] = {}
        for rec in self.images:
            out.setdefault(rec.patient_id, []).append(rec)
        return out

    def halves(self) -> Iterator[tuple[ImageRecord, str, SideLabel]]:
        return iter_halves(self.images)

    def summary(self) -> dict:
        fractured_sides = sum(len(r.fractured_sides) for r in self.images)
        return {
            "images": len(self.images),
            "patients": len(self.patients()),
            "fractured_images": sum(r.fractured for r in self.images),
            "fractured_sides": fractured_sides,
            "intact_sides": 2 * len(self.images) - fractured_sides,
        }


def _norm_file(raw: str, where: str) -> str:
    text = raw.strip().replace("\\", "/")
    if not text:
        raise DatasetError(f"{where}: the file column is empty")
    p = PurePosixPath(text)
    if p.is_absolute() or (len(text) > 1 and text[1] == ":") or ".." in p.parts:
        raise DatasetError(f"{where}: file {raw!r} must be a path relative to the dataset folder, without '..'")
    return p.as_posix()


def _parse_box(row: dict, where: str, required: bool) -> Box | None:
    raw = [(row.get(k) or "").strip() for k in ("x0", "y0", "x1", "y1")]
    if not any(raw):
        if required:
            raise DatasetError(f"{where}: the box x0,y0,x1,y1 is empty")
        return None
    if not all(raw):
        raise DatasetError(f"{where}: the box x0,y0,x1,y1 is incomplete ({','.join(raw)}): give all four numbers or none")
    try:
        x0, y0, x1, y1 = (float(v) for v in raw)
    except ValueError:
        raise DatasetError(f"{where}: the box x0,y0,x1,y1 is not numeric ({','.join(raw)})") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise DatasetError(f"{where}: the box x0,y0,x1,y1 is not finite ({','.join(raw)})")
    if min(x0, y0, x1, y1) < 0:
        raise DatasetError(f"{where}: the box ({','.join(raw)}) has a negative coordinate")
    if x1 <= x0 or y1 <= y0:
        raise DatasetError(
            f"{where}: the box ({','.join(raw)}) is inverted or empty: need x0 < x1 and y0 < y1 "
            "(x0,y0 = top-left, x1,y1 = bottom-right)"
        )
    return Box(x0, y0, x1, y1)


def _read_csv(path: Path, required: tuple[str, ...], extras: list | None = None) -> Iterator[tuple[int, dict]]:
    """Rows with their line numbers; the names of the columns beyond ``required`` are appended to
    ``extras`` when it is given (else such columns are ignored)."""
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err}") from err
    with fh:
        reader = csv.DictReader(fh)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        if not header:
            raise DatasetError(f"{path}: the file is empty; expected the header {','.join(required)}")
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetError(
                f"{path}, line 1: the header lacks {', '.join(missing)}; expected {','.join(required)}"
            )
        reader.fieldnames = header
        if extras is not None:
            more = [h for h in header if h not in required]
            named = [h for h in more if h]
            if len(set(named)) != len(named):
                raise DatasetError(f"{path}, line 1: a column name appears twice ({', '.join(sorted(named))})")
            extras.extend(named)
        try:
            for row in reader:
                if not any((v or "").strip() for k, v in row.items() if k is not None):
                    continue
                yield reader.line_num, row
        except csv.Error as err:
            raise DatasetError(f"{path}, line {reader.line_num}: {err}") from err
        except UnicodeDecodeError as err:
            raise DatasetError(f"{path}: not UTF-8 text ({err})") from err


def load_dataset(
    root: str | os.PathLike,
    *,
    labels: str = LABELS_FILE,
    regions: str | None = REGIONS_FILE,
    check_files: bool = True,
) -> Dataset:
    """Read and validate a dataset folder (see the module docstring for the format).

    ``regions.csv`` is read when present. With ``check_files`` every listed image must exist.
    Raises :class:`DatasetError` with the CSV file and line number of the first problem.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    labels_path = root / labels
    if not labels_path.is_file():
        raise DatasetError(f"{root} has no {labels}: a dataset folder needs one (header {','.join(LABEL_FIELDS)})")

    records: dict[str, ImageRecord] = {}
    first_line: dict[tuple[str, str], int] = {}
    extras: list[str] = []
    for line, row in _read_csv(labels_path, LABEL_FIELDS, extras):
        where = f"{labels_path}, line {line}"
        if (row.get("") or "").strip():
            raise DatasetError(f"{where}: a value under a column without a name")
        values = {c: (row.get(c) or "").strip() for c in extras}
        file = _norm_file(row.get("file") or "", where)
        patient = (row.get("patient_id") or "").strip()
        if not patient:
            raise DatasetError(f"{where}: patient_id is empty for {file}")
        side = (row.get("side") or "").strip().lower()
        if side not in SIDES and side != NONE_SIDE:
            raise DatasetError(f"{where}: side {row.get('side')!r} of {file} is not one of right, left, none")
        box = _parse_box(row, where, required=False)
        key = (file, side)
        if key in first_line:
            raise DatasetError(f"{where}: duplicate row for {file} side {side} (first at line {first_line[key]})")
        first_line[key] = line
        rec = records.get(file)
        if rec is None:
            path = root / file
            if check_files and not path.is_file():
                raise DatasetError(f"{where}: unknown file {file}: there is no such file in {root}")
            rec = ImageRecord(file=file, path=path, patient_id=patient,
                              sides={s: SideLabel(False) for s in SIDES}, line=line)
            records[file] = rec
        elif rec.patient_id != patient:
            raise DatasetError(
                f"{where}: {file} has patient_id {patient!r} here but {rec.patient_id!r} at line {rec.line}"
            )
        if side == NONE_SIDE:
            if box is not None:
                raise DatasetError(f"{where}: a 'none' row (no fracture) cannot have a box")
            other = [first_line[(file, s)] for s in SIDES if (file, s) in first_line]
            if other:
                raise DatasetError(f"{where}: {file} is marked 'none' but has a fracture row at line {other[0]}")
            for s_ in SIDES:
                rec.attributes[s_] = {c: v for c, v in values.items() if v}
        else:
            rec.attributes[side] = {c: v for c, v in values.items() if v}
            if (file, NONE_SIDE) in first_line:
                raise DatasetError(
                    f"{where}: {file} has a fracture row but is marked 'none' at line {first_line[(file, NONE_SIDE)]}"
                )
            rec.sides[side] = SideLabel(True, box)

    has_regions = False
    if regions:
        regions_path = root / regions
        if regions_path.is_file():
            has_regions = True
            seen: dict[tuple[str, str, str], int] = {}
            for line, row in _read_csv(regions_path, REGION_FIELDS):
                where = f"{regions_path}, line {line}"
                file = _norm_file(row.get("file") or "", where)
                rec = records.get(file)
                if rec is None:
                    raise DatasetError(f"{where}: unknown file {file}: it is not listed in {labels}")
                side = (row.get("side") or "").strip().lower()
                if side not in SIDES:
                    raise DatasetError(f"{where}: side {row.get('side')!r} of {file} is not one of right, left")
                region = (row.get("region") or "").strip()
                if not region:
                    raise DatasetError(f"{where}: the region name is empty")
                box = _parse_box(row, where, required=True)
                key = (file, side, region)
                if key in seen:
                    raise DatasetError(f"{where}: duplicate region {region} for {file} side {side} (first at line {seen[key]})")
                seen[key] = line
                rec.regions.setdefault(side, {})[region] = box
    levels = attribute_levels(records.values(), extras, labels_path)
    return Dataset(root=root, images=list(records.values()), has_regions=has_regions, attribute_levels=levels)


def attribute_levels(records: Iterable[ImageRecord], columns: list[str], labels_path: Path) -> dict[str, str]:
    """Each extra column's level (see the module docstring); an image-level value is copied to
    the intact sides of a fractured image, and must be the same on all rows of a file."""
    records = list(records)
    on_none = {c for r in records if not r.fractured for c in r.attributes.get(SIDES[0], {})}
    levels = {c: "image" if c in on_none else "fracture" for c in columns}
    for rec in records:
        if not rec.fractured:
            continue
        for column in (c for c, level in levels.items() if level == "image"):
            given = {rec.attributes.get(s, {}).get(column) for s in rec.fractured_sides} - {None}
            if len(given) > 1:
                raise DatasetError(
                    f"{labels_path}, line {rec.line}: column {column!r} describes the image (it has values on 'none' "
                    f"rows) but {rec.file} has different values on its rows: {', '.join(sorted(given))}")
            for side in SIDES:
                if given:
                    rec.attributes.setdefault(side, {})[column] = next(iter(given))
    return levels


def iter_halves(records: Iterable[ImageRecord] | Dataset) -> Iterator[tuple[ImageRecord, str, SideLabel]]:
    """Every (image, patient side, label) pair: two per image, right then left.

    Which half of the pixels holds a side depends on the file's PatientOrientation; see
    :func:`image_half`.
    """
    for rec in records:
        for side in SIDES:
            yield rec, side, rec.sides[side]


def image_half(side: str, patient_orientation=None) -> str:
    """Which image half ("left" / "right") shows patient ``side`` given a PatientOrientation
    (a backslash-joined string or a sequence of values); see
    :func:`hipcad.runtime.inference.sides.image_left_side`, which the inference path uses."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, not {side!r}")
    if patient_orientation is not None and not isinstance(patient_orientation, str):
        patient_orientation = "\\".join(str(v) for v in patient_orientation)
    left_is, _ = image_left_side(patient_orientation)
    return "left" if side == left_is else "right"


def split_by_patient(
    dataset: Dataset | Iterable[ImageRecord],
    fractions: tuple[float, ...] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> tuple[list[ImageRecord], ...]:
    """Split images into len(fractions) parts by patient (all images of a patient in one part).

    Patients are shuffled with ``seed`` then cut at the cumulative fractions; the result does
    not depend on the order of the CSV rows.
    """
    if not fractions or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"bad split fractions {fractions}")
    by_patient: dict[str, list[ImageRecord]] = {}
    for rec in dataset:
        by_patient.setdefault(rec.patient_id, []).append(rec)
    patients = sorted(by_patient)
    random.Random(seed).shuffle(patients)
    total = sum(fractions)
    bounds, acc = [], 0.0
    for f in fractions:
        acc += f
        bounds.append(round(acc / total * len(patients)))
    parts: list[list[ImageRecord]] = []
    start = 0
    for end in bounds:
        part = [rec for pid in patients[start:end] for rec in sorted(by_patient[pid], key=lambda r: r.file)]
        parts.append(part)
        start = end
    return tuple(parts)
