"""Drift on the box: what the worker sees, compared with what the model was validated on.

A new detector, a changed protocol or a broken VOI LUT shifts the scores and the eligibility rate
long before anyone counts errors. For every finished radiograph the worker records (no patient
data): per-day counts in the store (:meth:`Store.drift_add`) -- studies, assessed / not eligible
(by first reason) / unreadable, results with decode warnings (by warning), and per patient side
the halves, the positive calls and a histogram of the fracture log-odds ``l1 - l0`` on the bins of
:mod:`hipcad.runtime.model.reference` (log-odds before calibration, so a recalibration does not
move the history) -- and the same, result by result, in a ring of the newest rows.
:func:`summary` turns them into what ``/admin/drift`` and ``/metrics`` show:

* **Scores against the validation distribution** (the bundle manifest's ``reference``), per
  side, over the last ``window_days`` days and over the last ``recent`` hips (a change made this
  morning is not diluted by two weeks of good days): the **two-sample Kolmogorov-Smirnov test**
  on the binned log-odds (``D`` = the largest gap between the two cumulative distributions at the
  bin edges -- conservative, as binning can only shrink it; asymptotic p-value with Stephens'
  correction). A **shift** is flagged when ``p < 0.01`` with at least 30 hips. The same test per
  calendar week shows when it began.
* **Rates against the box's own past**: the share of radiographs assessed (eligible) and the
  share with decode warnings among the last ``recent`` radiographs against the ``4 x recent``
  before them, two-proportion z-test, flagged at ``p < 0.01`` with at least 30 radiographs in
  each. (A validation set is curated, so its eligibility says nothing about a site's.)
* Positive calls per day are shown beside the share of the reference halves at the current
  threshold; they follow the site's prevalence, so they are shown, not tested.
"""

from __future__ import annotations

import logging
import math
import re
import time

import numpy as np

from hipcad.runtime.inference.sides import SIDES
from hipcad.runtime.model.reference import LOGIT_EDGES, N_BINS, bin_index, histogram, reference_logits

log = logging.getLogger("hipcad.worker")

ALPHA = 0.01
MIN_HALVES = 30
MIN_STUDIES = 30
KEEP_DAYS = 400
KEEP_RECENT = 20000  # ring rows kept
BEFORE = 4  # the recent radiographs are compared with this many times as many before them
ASSESSED, INELIGIBLE, UNREADABLE, WARNED = 0, 1, 2, 4  # a ring 'study' row: outcome, + WARNED
TEST = (f"two-sample Kolmogorov-Smirnov test of the binned fracture log-odds against the bundle's reference; "
        f"shift when p < {ALPHA} with at least {MIN_HALVES} halves")


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(ts))


def _key(text: str) -> str:
    """A reason or warning as a counter name: digits folded (values vary), at most 100 characters."""
    return re.sub(r"\d+(\.\d+)?", "#", " ".join(str(text).split()))[:100]


def counts_for(record: dict) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """What one finished result adds: to its day's counts, and as rows of the ring."""
    out = {"studies": 1}
    if record.get("status") != "done":
        out["unreadable"] = 1
        return out, [("study", UNREADABLE)]
    warnings = record.get("warnings") or []
    warned = WARNED if warnings else 0
    if warnings:
        out["warned"] = 1
        for text in warnings:
            name = f"warning:{_key(text)}"
            out[name] = out.get(name, 0) + 1
    if not record.get("eligible", True):
        reasons = (record.get("eligibility") or {}).get("reasons") or ["not eligible"]
        out["ineligible"] = 1
        out[f"ineligible:{_key(reasons[0])}"] = 1
        return out, [("study", INELIGIBLE + warned)]
    out["assessed"] = 1
    ring = [("study", ASSESSED + warned)]
    for side in record.get("sides") or []:
        s = side["side"]
        logit = side.get("logit")
        if logit is None:  # a record from before log-odds were kept: recovered from the probability
            p = min(max(float(side["probability"]), 1e-12), 1 - 1e-12)
            logit = math.log(p / (1 - p))
        b = bin_index(float(logit))
        out[f"halves:{s}"] = 1
        out[f"bin:{s}:{b}"] = 1
        ring.append((s, b))
        if side.get("fracture"):
            out[f"positive:{s}"] = 1
    return out, ring


def record(store, result_record: dict, bundle) -> None:
    """Count one finished result (the worker's hook). Never raises: monitoring must not stop reading."""
    try:
        at = result_record.get("finished_at") or time.time()
        counts, ring = counts_for(result_record)
        store.drift_add(_day(at), bundle.key, counts, ring, _day(at - KEEP_DAYS * 86400), KEEP_RECENT)
    except Exception:  # noqa: BLE001 - logged; the radiograph's result is already stored
        log.warning("could not record drift counts", exc_info=True)


def ks_binned(a: np.ndarray, b: np.ndarray) -> dict:
    """Two-sample Kolmogorov-Smirnov on two histograms over the same bins."""
    n, m = int(a.sum()), int(b.sum())
    if n == 0 or m == 0:
        return {"statistic": None, "p_value": None, "n": n, "m": m}
    d = float(np.max(np.abs(np.cumsum(a) / n - np.cumsum(b) / m)))
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 0.2:
        p = 1.0
    else:
        p = 2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 101))
        p = min(1.0, max(0.0, p))
    return {"statistic": d, "p_value": p, "n": n, "m": m}


def two_proportions(k1: int, n1: int, k2: int, n2: int) -> dict:
    """Two-sided two-proportion z-test (pooled variance)."""
    out = {"recent": k1 / n1 if n1 else None, "before": k2 / n2 if n2 else None, "n_recent": n1, "n_before": n2,
           "p_value": None, "shift": False}
    if n1 < MIN_STUDIES or n2 < MIN_STUDIES:
        return out
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    p = 1.0 if se == 0 else math.erfc(abs(k1 / n1 - k2 / n2) / se / math.sqrt(2))
    out.update(p_value=p, shift=p < ALPHA)
    return out


def _median_probability(hist: np.ndarray, calibration) -> float | None:
    """The probability shown at the middle of the histogram's median bin."""
    total = hist.sum()
    if not total:
        return None
    i = int(np.searchsorted(np.cumsum(hist), total / 2))
    lo = LOGIT_EDGES[i - 1] if i > 0 else LOGIT_EDGES[0] - 0.5
    hi = LOGIT_EDGES[i] if i < len(LOGIT_EDGES) else LOGIT_EDGES[-1] + 0.5
    return float(calibration.probability(np.array([[0.0, (lo + hi) / 2]]))[0])


def _scores(h: np.ndarray, ref_hist: np.ndarray | None, calibration) -> dict:
    entry = {"halves": int(h.sum()), "histogram": h.tolist(), "median_probability": _median_probability(h, calibration),
             "ks": None, "shift": False}
    if ref_hist is not None:
        entry["ks"] = ks_binned(h, ref_hist)
        entry["shift"] = bool(h.sum() >= MIN_HALVES and entry["ks"]["p_value"] is not None and entry["ks"]["p_value"] < ALPHA)
    return entry


def summary(store, bundle, window_days: int = 14, recent: int = 100, history_days: int = 56,
            now: float | None = None) -> dict:
    """The drift figures of ``bundle`` (its key, reference, calibration and threshold) from the
    store: daily series, window and recent histograms and tests, weekly tests, rates, flags."""
    now = time.time() if now is None else now
    days = [_day(now - i * 86400) for i in range(max(history_days, window_days) - 1, -1, -1)]
    per_day: dict[str, dict[str, int]] = {d: {} for d in days}
    for row in store.drift_counts(days[0]):
        name = row["name"]
        if row["day"] not in per_day or (name.split(":")[0] in ("bin", "halves", "positive") and row["model"] != bundle.key):
            continue
        per_day[row["day"]][name] = per_day[row["day"]].get(name, 0) + row["count"]

    def hist(day_list, side):
        h = np.zeros(N_BINS, dtype=np.int64)
        for d in day_list:
            for name, n in per_day[d].items():
                if name.startswith(f"bin:{side}:"):
                    h[int(name.rsplit(":", 1)[1])] += n
        return h

    def total(day_list, name):
        return sum(per_day[d].get(name, 0) for d in day_list)

    ref = reference_logits(bundle.manifest)
    ref_hist = histogram(ref) if ref is not None else None
    cal = bundle.calibration
    cut = cal.log_odds(bundle.threshold) if 0 < bundle.threshold < 1 else (math.inf if bundle.threshold >= 1 else -math.inf)
    window = days[-window_days:]
    out = {"model": bundle.key, "window_days": window_days, "recent": recent, "history_days": history_days,
           "today": days[-1], "test": TEST, "alpha": ALPHA, "min_halves": MIN_HALVES, "edges": [float(e) for e in LOGIT_EDGES],
           "calibrated": cal.calibrated, "temperature": cal.temperature, "bias": cal.bias, "threshold": bundle.threshold,
           "reference": None if ref is None else {
               **{k: (bundle.manifest.get("reference") or {}).get(k) for k in ("halves", "fractured_halves", "source", "created")},
               "histogram": ref_hist.tolist(), "positive_share": float(np.mean(ref >= cut)),
               "median_probability": _median_probability(ref_hist, cal)},
           "sides": {}, "recent_sides": {}, "weekly": [], "flags": []}
    for side in SIDES:
        entry = out["sides"][side] = _scores(hist(window, side), ref_hist, cal)
        entry["positives"] = total(window, f"positive:{side}")
        last = np.bincount(store.drift_recent(side, recent, bundle.key), minlength=N_BINS)
        latest = out["recent_sides"][side] = _scores(last, ref_hist, cal)
        for key, e, what in ((f"scores-{side}", entry, f"in the last {window_days} days"),
                             (f"recent-{side}", latest, f"among the last {latest['halves']} hips read")):
            if e["shift"]:
                out["flags"].append({"key": key, "text":
                                     f"Scores of patient {side} hips {what} differ from the model's validation: "
                                     f"Kolmogorov-Smirnov D = {e['ks']['statistic']:.3f}, p = {e['ks']['p_value']:.2g} "
                                     f"< {ALPHA} ({e['halves']} hips)"})
    for start in range(len(days) - history_days, len(days), 7):
        week = days[start:start + 7]
        row = {"start": week[0], "end": week[-1], "sides": {}}
        for side in SIDES:
            h = hist(week, side)
            ks = ks_binned(h, ref_hist) if ref_hist is not None else {"statistic": None, "p_value": None}
            row["sides"][side] = {"halves": int(h.sum()), "statistic": ks["statistic"], "p_value": ks["p_value"],
                                  "shift": bool(h.sum() >= MIN_HALVES and ks["p_value"] is not None and ks["p_value"] < ALPHA)}
        out["weekly"].append(row)
    out["daily"] = [{"day": d, **{k: per_day[d].get(k, 0) for k in ("studies", "assessed", "ineligible", "unreadable", "warned")},
                     "halves": sum(per_day[d].get(f"halves:{s}", 0) for s in SIDES),
                     "positives": sum(per_day[d].get(f"positive:{s}", 0) for s in SIDES)} for d in days[-history_days:]]
    studies = store.drift_recent("study", recent * (1 + BEFORE))
    newest, before = studies[:recent], studies[recent:]

    def share(rows, test):
        return sum(1 for v in rows if test(v)), len(rows)
    out["rates"] = {
        "assessed": two_proportions(*share(newest, lambda v: v & 3 == ASSESSED),
                                    *share(before, lambda v: v & 3 == ASSESSED)),
        "warned": two_proportions(*share(newest, lambda v: v & WARNED), *share(before, lambda v: v & WARNED)),
        "test": f"two-proportion z-test, the last {recent} radiographs against the {BEFORE * recent} before them; "
                f"shift when p < {ALPHA} with at least {MIN_STUDIES} radiographs in each",
    }
    for key, words in (("assessed", "share of radiographs assessed (eligible)"), ("warned", "share with decode warnings")):
        rate = out["rates"][key]
        if rate["shift"]:
            out["flags"].append({"key": f"rate-{key}", "text": f"The {words} changed: {rate['recent']:.1%} of the last "
                                 f"{rate['n_recent']} radiographs against {rate['before']:.1%} of the {rate['n_before']} "
                                 f"before (p = {rate['p_value']:.2g})"})
    out["reasons"] = {name.split(":", 1)[1]: total(window, name) for name in sorted({n for d in window for n in per_day[d]})
                      if name.startswith("ineligible:")}
    out["warnings"] = {name.split(":", 1)[1]: total(window, name) for name in sorted({n for d in window for n in per_day[d]})
                       if name.startswith("warning:")}
    return out
