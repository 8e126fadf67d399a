"""Writing a dataset's ``labels.csv`` and ``regions.csv`` (the format of :mod:`.dataset`)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable

from hipcad.runtime.durable import atomic_write
from hipcad.runtime.evaluation.dataset import (
    LABEL_FIELDS,
    LABELS_FILE,
    NONE_SIDE,
    REGION_FIELDS,
    REGIONS_FILE,
    SIDES,
    Box,
    DatasetError,
    ImageRecord,
    SideLabel,
    _norm_file,
)


def _fmt(x: float) -> str:
    x = float(x)
    if x.is_integer():
        return str(int(x))
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _box_cells(box: Box | None) -> list[str]:
    return ["", "", "", ""] if box is None else [_fmt(v) for v in box]


def _atomic_write_csv(path: Path, header: tuple[str, ...], rows: Iterable[list[str]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, text.getvalue().encode("utf-8"), durable=False)


def write_labels(root: str | os.PathLike, records: Iterable[ImageRecord], *, regions: bool = True) -> Path:
    """Write ``labels.csv`` (and ``regions.csv`` when any record has regions) into ``root``, with a
    column per attribute of the records (a ``none`` row takes the right side's values).

    The files are replaced atomically. Returns the path of labels.csv.
    """
    root = Path(root)
    records = list(records)
    columns = list(dict.fromkeys(c for rec in records for s in SIDES for c in rec.attributes.get(s, {})))
    label_rows: list[list[str]] = []
    region_rows: list[list[str]] = []
    seen: set[str] = set()
    for rec in records:
        file = _norm_file(rec.file, "write_labels")
        if file in seen:
            raise DatasetError(f"write_labels: {file} is listed twice")
        seen.add(file)
        fractured = [s for s in SIDES if rec.sides.get(s, SideLabel(False)).fracture]

        def extra(side: str) -> list[str]:
            return [rec.attributes.get(side, {}).get(c, "") for c in columns]
        if not fractured:
            label_rows.append([file, rec.patient_id, NONE_SIDE, "", "", "", ""] + extra(SIDES[0]))
        for side in fractured:
            label_rows.append([file, rec.patient_id, side] + _box_cells(rec.sides[side].box) + extra(side))
        for side in SIDES:
            for name, box in sorted(rec.regions.get(side, {}).items()):
                region_rows.append([file, side, name] + _box_cells(box))
    root.mkdir(parents=True, exist_ok=True)
    labels_path = root / LABELS_FILE
    _atomic_write_csv(labels_path, LABEL_FIELDS + tuple(columns), label_rows)
    if regions and region_rows:
        _atomic_write_csv(root / REGIONS_FILE, REGION_FIELDS, region_rows)
    return labels_path
