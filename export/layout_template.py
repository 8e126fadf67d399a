"""The AP-pelvis layout template a bundle's eligibility check correlates images with: the mean of a
model's training images in the canonical frame of :mod:`hipcad.runtime.inference.pelvis`, with
the minimum layout score set from how well those images match it.

``hipcad train`` builds it from its training images; ``hipcad export`` (no images at hand) copies
hipcad's default template, built the same way from synthetic phantoms; ``hipcad layout-template``
rebuilds it for an existing bundle from a folder of radiographs the model is for.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from hipcad.runtime.durable import atomic_write
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.inference.eligibility import content_checks
from hipcad.runtime.inference.midline import Midline, midline_of
from hipcad.runtime.inference.pelvis import correlation, layout_patch, load_template, pelvis_evidence
from hipcad.runtime.model import intended_use as iu
from hipcad.runtime.model.bundle import load_bundle
from hipcad.runtime.model.files import sha256_file
from hipcad.runtime.tools.signing import rewrite_manifest

U = np.arange(-2.0, 2.0001, 0.125, dtype=np.float32)  # across, in units of half the head distance
V = np.arange(-2.0, 2.6001, 0.125, dtype=np.float32)  # down from the heads' level
# the minimum layout score: the training images' 0.5th percentile less this margin, never above
# the default (0.50; synthetic negatives scored at most 0.45 against a phantom template)
SCORE_MARGIN = 0.10


class LayoutTemplateError(HipcadError):
    """Too few images to build a layout template from."""


def is_pelvis(midline: Midline | None) -> bool:
    """Whether an image passes the eligibility check's midline and anatomy (heads, shafts,
    obturator foramina, symmetry) at hipcad's default thresholds: only such images go into a
    template. The layout itself cannot be judged yet: it is what is being built."""
    if midline is None or midline.confidence < iu.DEFAULT_INTENDED_USE["midline"]["refuse_below"]:
        return False
    _, reasons = content_checks(midline, iu.DEFAULT_INTENDED_USE["content"], template=None)
    return not reasons


def build(images: Iterable[np.ndarray], source: str, min_images: int = 20) -> tuple[dict, dict]:
    """(template arrays, calibration) from 2-D uint8 radiographs (bone bright); images that are
    not an AP pelvis with both hips (:func:`is_pelvis`) are left out and counted."""
    patches, left_out = [], 0
    for pixels in images:
        midline = midline_of(pixels)
        if not is_pelvis(midline):
            left_out += 1
            continue
        patch = layout_patch(midline, pelvis_evidence(midline), U, V)
        patches += [patch, patch[:, ::-1]]  # mirrored too: the template is symmetric
    if len(patches) < 2 * min_images:
        raise LayoutTemplateError(f"only {len(patches) // 2} image(s) looked like an AP pelvis with both hips "
                                  f"({left_out} left out); at least {min_images} are needed for a layout template")
    with warnings.catch_warnings():  # a cell outside every image's field stays NaN (correlation skips it)
        warnings.simplefilter("ignore", RuntimeWarning)
        template = np.nanmean(np.stack(patches), axis=0).astype(np.float32)
    scores = np.array([correlation(p, template)[0] for p in patches[::2]])
    calibration = {"source": source, "images": len(patches) // 2, "left_out": left_out, "built": time.strftime("%Y-%m-%d"),
                   "self_score_min": round(float(scores.min()), 4),
                   "self_score_p0_5": round(float(np.percentile(scores, 0.5)), 4)}
    calibration["min_layout_score"] = round(min(iu.DEFAULT_INTENDED_USE["content"]["min_layout_score"],
                                                calibration["self_score_p0_5"] - SCORE_MARGIN), 3)
    return {"template": template, "U": U, "V": V}, calibration


def _npz_bytes(arrays: dict, calibration: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, meta=np.array(json.dumps(calibration)))
    return buffer.getvalue()


def default_calibration() -> dict:
    meta = load_template(iu.DEFAULT_TEMPLATE)["meta"]
    return {**json.loads(str(meta)), "note": "hipcad's default template (synthetic phantoms); rebuild it on images "
            "of your site's kind with `hipcad layout-template`"}


def intended_use_entry(work: Path, overrides: dict | None = None, built: tuple[dict, dict] | None = None) -> dict:
    """Write the layout template into the bundle folder ``work`` (``built`` by :func:`build`, or
    hipcad's default) and return the manifest's ``intended_use`` entry: the defaults after the
    paper, ``overrides`` over them, and the template's file, hash and calibration."""
    target = work / iu.TEMPLATE_FILE
    if built is None:
        shutil.copyfile(iu.DEFAULT_TEMPLATE, target)
        calibration = default_calibration()
    else:
        atomic_write(target, _npz_bytes(*built))
        calibration = built[1]
    entry = json.loads(json.dumps(iu.DEFAULT_INTENDED_USE))
    entry["content"]["layout_template"] = iu.TEMPLATE_FILE
    entry["content"]["layout_template_sha256"] = sha256_file(target)
    entry["content"]["layout_calibration"] = calibration
    if built is not None:
        entry["content"]["min_layout_score"] = calibration["min_layout_score"]
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(entry.get(key), dict):
            entry[key].update(value)
        else:
            entry[key] = value
    iu.resolve(entry, work)  # refuses unknown keys and wrong types now, not on the box
    return entry


def read_overrides(path: str | None) -> dict | None:
    """Intended-use overrides from a JSON file (``--intended-use``)."""
    if not path:
        return None
    try:
        overrides = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HipcadError(f"cannot read the intended-use file {path}: {err}") from err
    if not isinstance(overrides, dict):
        raise HipcadError(f"{path}: the intended use must be a JSON object")
    return overrides


def main(argv: list[str] | None = None) -> int:
    """``hipcad layout-template``: rebuild a bundle's layout template from radiographs."""
    from hipcad.runtime.imaging.decode import decode
    from hipcad.runtime.inference.pipeline import min_decode_side
    from hipcad.runtime.predict import expand_inputs

    parser = argparse.ArgumentParser(
        prog="hipcad layout-template",
        description="Rebuild the AP-pelvis layout template of a bundle's eligibility check from radiographs the model "
        "is for (its training images, or a site's own AP pelves), and set the minimum layout score from them.")
    parser.add_argument("bundle", help="the model bundle to update")
    parser.add_argument("inputs", nargs="+", help="radiograph files or folders (AP pelves with both hips)")
    parser.add_argument("--images", type=int, default=400, help="use at most this many (default 400)")
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.bundle)
        paths = expand_inputs(args.inputs)[: args.images]
        side = min_decode_side(bundle.input_hw)
        built = build((decode(p, min_side=side).pixels for p in paths), f"{len(paths)} radiograph(s) given to "
                      "`hipcad layout-template`")
        manifest = dict(bundle.manifest)
        entry = manifest.get("intended_use") or {}
        overrides = {k: v for k, v in entry.items() if k != "content"}
        manifest["intended_use"] = intended_use_entry(bundle.path, overrides, built)
        rewrite_manifest(bundle.path, manifest)
    except HipcadError as err:
        print(f"hipcad layout-template: {err}", file=sys.stderr)
        return 1
    cal = built[1]
    print(f"{bundle.path}: layout template from {cal['images']} image(s); their scores: min {cal['self_score_min']}, "
          f"0.5th percentile {cal['self_score_p0_5']}; minimum layout score now {cal['min_layout_score']}")
    return 0
