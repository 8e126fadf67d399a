"""The pelvic midline: where a radiograph is split into the patient's right and left hip.

The pelvis is not always centred in the film, so the midline is found as the vertical axis of
best left-right mirror symmetry of the image's edges, searched over the central half of the
width on a small copy of the image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MIDLINE_WORK_WIDTH = 256
MIDLINE_SEARCH = (0.25, 0.75)  # fraction of the width searched for the midline


def find_midline(pixels: np.ndarray) -> int:
    """Column of best left-right mirror symmetry of the image's edge map.

    Symmetry is scored by the normalised cross-correlation of the edge map left of a candidate
    column with the mirrored edge map right of it, so that featureless regions (soft tissue,
    collimator shutters) score nothing and the pelvis, rich in mirrored edges, wins.
    """
    rows, cols = pixels.shape
    work_w = min(MIDLINE_WORK_WIDTH, cols)
    work_h = max(8, round(rows * work_w / cols))
    small = np.asarray(Image.fromarray(pixels).resize((work_w, work_h), Image.BILINEAR, reducing_gap=3.0), dtype=np.float32)
    # edges, robust to exposure gradients: horizontal + vertical gradient magnitude
    edges = np.abs(np.diff(small, axis=1))[:-1, :] + np.abs(np.diff(small, axis=0))[:, :-1]
    # a few very strong edges (collimator shutters, markers, the film's border) must not outvote
    # the many bone contours of the pelvis
    np.minimum(edges, np.percentile(edges, 90), out=edges)
    w = edges.shape[1]
    lo, hi = int(w * MIDLINE_SEARCH[0]), int(w * MIDLINE_SEARCH[1])
    span = int(w * 0.2)
    best, best_score = w // 2, -np.inf
    for c in range(max(lo, span), min(hi, w - span) + 1):
        left = edges[:, c - span : c]
        right = edges[:, c : c + span][:, ::-1]
        a, b = left - left.mean(), right - right.mean()
        score = float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-6))
        if score > best_score:
            best, best_score = c, score
    return int(round((best + 0.5) * cols / w))
