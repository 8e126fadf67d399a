"""The training samples: each radiograph cut into its two hip halves the way the paper cut them,
decoded exactly as the runtime decodes, with their fracture boxes; decoded in processes and cached."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hipcad.runtime.durable import atomic_write
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.evaluation.dataset import ImageRecord
from hipcad.runtime.imaging.decode import decode
from hipcad.runtime.inference.midline import find_midline
from hipcad.runtime.inference.pipeline import min_decode_side
from hipcad.runtime.inference.preprocess import resize_gray
from hipcad.runtime.inference.sides import SIDES, half_spans, image_left_side

MARGIN_PX = 50  # the paper's margin between the dividing line and the fracture box, stored pixels


@dataclass
class Halves:
    images: np.ndarray  # uint8 [M, 1, H, W]
    labels: np.ndarray  # int64 [M]
    sources: list[str]  # "file:side" per half
    boxes: np.ndarray  # float32 [M, 4]: the fracture box in input pixels (x0, y0, x1, y1); NaN where none


def dividing_line(cols: int, midline: int, box_x: tuple[float, float] | None, box_on_image_left: bool, margin: float) -> int:
    """The cut column: the midline, moved away from the fracture box to keep ``margin`` pixels."""
    cut = midline
    if box_x is not None:
        x0, x1 = box_x
        cut = max(cut, math.ceil(x1 + margin)) if box_on_image_left else min(cut, math.floor(x0 - margin))
    return int(min(max(cut, 1), cols - 1))


def cut_record(record: ImageRecord, input_hw: tuple[int, int]) -> list[tuple[np.ndarray, int, str, tuple | None]]:
    """The two labelled halves of one radiograph, cut as the paper did, each with its fracture
    box mapped to input pixels (None where the half has no fracture or the box is unknown)."""
    # decoded exactly as the runtime pipeline decodes (the same reduced-size decoding)
    radiograph = decode(record.path, min_side=min_decode_side(input_hw))
    pixels, scale = radiograph.pixels, radiograph.scale
    cols = pixels.shape[1]
    left_is, _ = image_left_side(radiograph.metadata.get("patient_orientation"))
    fractured = record.fractured_sides
    if len(fractured) > 1:
        # both hips fractured: no dividing line can separate them; cut at the midline
        box_x, on_left = None, True
    elif fractured and record.sides[fractured[0]].box is not None:
        box = record.sides[fractured[0]].box
        box_x, on_left = (box.x0 * scale, box.x1 * scale), fractured[0] == left_is
    else:
        box_x, on_left = None, True
    cut = dividing_line(cols, find_midline(pixels).x, box_x, on_left, MARGIN_PX * scale)
    spans = half_spans(cut, cols, left_is)
    h, w = input_hw
    rows = pixels.shape[0]
    out = []
    for side in SIDES:
        x0, x1 = spans[side]
        label = record.sides[side]
        box = None
        if label.fracture and label.box is not None:
            sx, sy = w / (x1 - x0), h / rows
            b = label.box
            box = ((b.x0 * scale - x0) * sx, b.y0 * scale * sy, (b.x1 * scale - x0) * sx, b.y1 * scale * sy)
        out.append((resize_gray(pixels[:, x0:x1], input_hw), int(label.fracture), f"{record.file}:{side}", box))
    return out


def _cut_or_skip(args: tuple[ImageRecord, tuple[int, int]]):
    record, input_hw = args
    try:
        return cut_record(record, input_hw), None
    except HipcadError as err:
        return None, f"skipped {record.file}: {err}"


def load_halves(records: list[ImageRecord], input_hw: tuple[int, int], desc: str, jobs: int = 1) -> Halves:
    """Decode and cut ``records`` (in ``jobs`` processes), keeping their order."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    images, labels, sources, boxes = [], [], [], []
    work = [(record, input_hw) for record in records]
    pool = ProcessPoolExecutor(jobs) if jobs > 1 and len(work) > 1 else None
    done = False
    try:
        results = pool.map(_cut_or_skip, work, chunksize=8) if pool else map(_cut_or_skip, work)
        for halves, skipped in tqdm(results, total=len(work), desc=f"reading {desc}", unit="image", file=sys.stderr,
                                    disable=None if records else True):
            if skipped:
                print(skipped, file=sys.stderr)
                continue
            for image, label, source, box in halves:
                images.append(image)
                labels.append(label)
                sources.append(source)
                boxes.append(box if box is not None else (np.nan,) * 4)
        done = True
    finally:
        if pool:
            pool.shutdown(cancel_futures=not done)  # Ctrl-C or an error: do not decode the rest
    h, w = input_hw
    array = np.stack(images)[:, None] if images else np.zeros((0, 1, h, w), np.uint8)
    return Halves(array, np.asarray(labels, dtype=np.int64), sources, np.asarray(boxes, dtype=np.float32).reshape(-1, 4))


CUT_VERSION = 3  # bump when cut_record (or the decoding it uses) changes what it returns


def cached_halves(records: list[ImageRecord], input_hw: tuple[int, int], desc: str, jobs: int, cache: str | None) -> Halves:
    """``load_halves``, kept in ``cache`` (an .npz per split) keyed by the files' names, sizes and
    modification times, the input size and the cut: a second training run on the same dataset
    skips decoding."""
    if not cache:
        return load_halves(records, input_hw, desc, jobs)
    import hashlib

    def identity(path: Path) -> tuple:
        try:
            st = path.stat()
            return st.st_size, st.st_mtime_ns
        except OSError:  # unreadable: load_halves skips it and says so
            return None, None

    key = hashlib.sha256(repr((CUT_VERSION, tuple(input_hw), [
        (str(r.path.resolve()), *identity(r.path), sorted((k, repr(v)) for k, v in r.sides.items()))
        for r in records])).encode()).hexdigest()[:20]
    path = Path(cache) / f"halves-{desc}-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            print(f"reading {desc}: {len(z['labels'])} halves from {path}", file=sys.stderr)
            return Halves(z["images"], z["labels"], [str(x) for x in z["sources"]], z["boxes"])
    halves = load_halves(records, input_hw, desc, jobs)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: np.savez(fh, images=halves.images, labels=halves.labels,
                                           sources=np.asarray(halves.sources), boxes=halves.boxes), durable=False)
    return halves
