"""The bundle's reference distribution: the fracture log-odds ``l1 - l0`` of the labelled halves
it was last validated or calibrated on, kept in the manifest (``reference``) so that a box can
compare what it sees with what the model was checked on (drift monitoring, ``/admin/drift``).

Log-odds before any temperature are kept, not probabilities: they do not change when the bundle
is recalibrated, and a confident model's scores, crowded at 0 and 1 as probabilities, spread out.
Both the box's counts and the reference are binned on :data:`LOGIT_EDGES`.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np

#: bin edges on the log-odds: half a unit wide from -10 to 10, plus two open-ended bins
LOGIT_EDGES = np.round(np.arange(-10.0, 10.0 + 0.25, 0.5), 2)
N_BINS = len(LOGIT_EDGES) + 1


def bin_index(logit: float) -> int:
    """Which bin a log-odds falls in: 0 is (-inf, -10), ``N_BINS - 1`` is [10, inf)."""
    if not np.isfinite(logit):
        return 0 if logit < 0 else N_BINS - 1
    return int(np.searchsorted(LOGIT_EDGES, logit, side="right"))


def histogram(logits) -> np.ndarray:
    """Counts per bin of :data:`LOGIT_EDGES` (length :data:`N_BINS`)."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    x = np.nan_to_num(x, nan=0.0, posinf=1e9, neginf=-1e9)
    return np.bincount(np.searchsorted(LOGIT_EDGES, x, side="right"), minlength=N_BINS).astype(np.int64)


def make_reference(logits, labels, source: str) -> dict:
    """The manifest's ``reference`` entry for these halves' log-odds (rounded to 3 decimals,
    sorted) and labels (only their count of fractures is kept)."""
    x = np.sort(np.round(np.asarray(logits, dtype=np.float64).reshape(-1), 3))
    y = np.asarray(labels).reshape(-1)
    return {"logits": [float(v) for v in x], "halves": int(x.size), "fractured_halves": int(np.sum(y == 1)),
            "source": source, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "what": "fracture log-odds l1 - l0 (before calibration) of labelled halves, sorted"}


def reference_logits(manifest: dict) -> np.ndarray | None:
    """The reference log-odds of a manifest, or None when it has none."""
    entry = manifest.get("reference") or {}
    values = entry.get("logits")
    if not values:
        return None
    return np.asarray(values, dtype=np.float64)
