"""``hipcad reader-study``: the paper's reader study from the kiosk's read-first answers.

Each reader answers every hip twice: first without the CAD (``before``), then with the CAD's
verdict and heatmap (``after``). This module reads the kiosk's ``reader-study.csv``::

    reader,study_id,file,side,truth,before,after,before_at,after_at
    R01,17,cases/0017.dcm,right,1,0,1,2024-05-02T10:01:12+09:00,2024-05-02T10:01:40+09:00

``truth``, ``before`` and ``after`` are 1 (fracture) or 0 (no fracture); ``side`` is the
patient side (right/left). ``truth`` is empty when the kiosk did not know it; then
``--labels DATASET/labels.csv`` (the dataset format of :mod:`hipcad.runtime.evaluation.dataset`) supplies
it, matched on the ``file`` column (the full relative path when it matches, else the basename).

It reports, per reader and pooled over all answers, accuracy, sensitivity and specificity before
and after with Wald 95 % intervals (as the paper; :func:`hipcad.runtime.evaluation.stats.proportion_ci`),
and the paper's two tests:

* **Wilcoxon signed-rank test** on the per-reader paired accuracies (after - before), two-sided,
  ``zero_method="wilcox"`` (zero differences dropped), following ``scipy.stats.wilcoxon``'s
  default ``method="auto"`` as scipy 1.17 implements it (see :func:`wilcoxon_signed_rank`).
* **Fisher's exact test**, two-sided, on the pooled 2x2 table of correct/incorrect answers
  after vs before (see :func:`fisher_exact`). Note that it treats the before and after answers
  as independent samples, as the paper did; they are paired (the same reader, the same hip).

Neither test needs scipy: the device has none.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath

import numpy as np

from hipcad.runtime.errors import HipcadError
from hipcad.runtime.evaluation.stats import CI_METHODS, confusion_counts, rates_from_confusion

__all__ = [
    "RESPONSE_FIELDS",
    "ReaderStudyError",
    "Response",
    "read_responses",
    "read_labels",
    "apply_labels",
    "wilcoxon_signed_rank",
    "fisher_exact",
    "analyse",
    "reader_study_main",
]

RESPONSE_FIELDS = ("reader", "study_id", "file", "side", "truth", "before", "after", "before_at", "after_at")
SIDES = ("right", "left")
MAX_LISTED = 10  # bad rows named in one error message


class ReaderStudyError(HipcadError, ValueError):
    """The responses or labels cannot be analysed; the message names the file and lines."""


@dataclass
class Response:
    line: int
    reader: str
    study_id: str
    file: str
    side: str
    truth: int | None
    before: int
    after: int


# -- reading ---------------------------------------------------------------------------------------

def _too_many(problems: list[str]) -> str:
    shown = "; ".join(problems[:MAX_LISTED])
    more = len(problems) - MAX_LISTED
    return shown + (f"; and {more} more" if more > 0 else "")


def _binary(text: str | None, empty_ok: bool) -> int | None | str:
    """0/1 from a cell, None for an empty one (where allowed), else the string 'bad'."""
    v = _unguard(text).lower()
    if v == "" and empty_ok:
        return None
    if v in ("1", "1.0", "true"):
        return 1
    if v in ("0", "0.0", "false"):
        return 0
    return "bad"


def _unguard(text: str | None) -> str:
    """A cell as written, without the quote the kiosk's CSV export puts before a leading
    ``= + - @`` (so that a spreadsheet does not run it as a formula)."""
    text = (text or "").strip()
    return text[1:] if text[:1] == "'" and text[1:2] in ("=", "+", "-", "@") else text


def _norm_file(text: str) -> str:
    return PurePosixPath(_unguard(text).replace("\\", "/")).as_posix()


def read_responses(path, *, skip_incomplete: bool = False) -> tuple[list[Response], list[str]]:
    """The validated rows of a kiosk ``reader-study.csv`` and notes about skipped rows.

    Raises :class:`ReaderStudyError` naming every bad row (the first ten) by line number: a
    missing column, an empty reader, file or side, a side other than right/left, truth other
    than 0/1/empty, before/after other than 0/1, a duplicate (reader, study, side). With
    ``skip_incomplete`` rows whose ``before`` or ``after`` answer is empty (a reader who has not
    finished) are left out and counted in the notes instead of being errors.
    """
    path = Path(path)
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as err:
        raise ReaderStudyError(f"cannot read {path}: {err.strerror or err}") from None
    rows: list[Response] = []
    problems: list[str] = []
    skipped: list[int] = []
    seen: dict[tuple[str, str, str], int] = {}
    with fh:
        reader = csv.DictReader(fh)
        try:
            header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
        except csv.Error as err:
            raise ReaderStudyError(f"{path}: not a readable CSV file ({err})") from None
        except UnicodeDecodeError as err:
            raise ReaderStudyError(f"{path}: not UTF-8 text ({err})") from None
        if not header:
            raise ReaderStudyError(f"{path}: the file is empty; expected the header {','.join(RESPONSE_FIELDS)}")
        missing = [c for c in RESPONSE_FIELDS if c not in header]
        if missing:
            raise ReaderStudyError(
                f"{path}, line 1: the header lacks {', '.join(missing)}; expected {','.join(RESPONSE_FIELDS)}")
        reader.fieldnames = header
        try:
            for row in reader:
                line = reader.line_num
                if not any((v or "").strip() for k, v in row.items() if k is not None and isinstance(v, str)):
                    continue
                where = f"line {line}"
                bad: list[str] = []
                name = _unguard(row.get("reader"))
                study = _unguard(row.get("study_id"))
                file = _norm_file(row.get("file") or "")
                side = (row.get("side") or "").strip().lower()
                if not name:
                    bad.append("the reader is empty")
                if not (row.get("file") or "").strip():
                    bad.append("the file is empty")
                if side not in SIDES:
                    bad.append(f"side {row.get('side')!r} is not right or left")
                truth = _binary(row.get("truth"), empty_ok=True)
                if truth == "bad":
                    bad.append(f"truth {row.get('truth')!r} is not 1, 0 or empty")
                before = _binary(row.get("before"), empty_ok=True)
                after = _binary(row.get("after"), empty_ok=True)
                incomplete = before is None or after is None
                for col, v in (("before", before), ("after", after)):
                    if v == "bad":
                        bad.append(f"{col} {row.get(col)!r} is not 1 (fracture) or 0 (no fracture)")
                    elif v is None and not skip_incomplete:
                        bad.append(f"the {col} answer is empty (an unfinished reading; --skip-incomplete leaves such rows out)")
                if not bad:
                    key = (name, study or file, side)
                    if key in seen:
                        bad.append(f"duplicate answer of reader {name!r} for {file} {side} (first at line {seen[key]})")
                    else:
                        seen[key] = line
                if bad:
                    problems.append(f"{where}: " + ", ".join(bad))
                elif incomplete:
                    skipped.append(line)
                else:
                    rows.append(Response(line, name, study, file, side, truth, before, after))
        except csv.Error as err:
            raise ReaderStudyError(f"{path}, line {reader.line_num}: {err}") from None
        except UnicodeDecodeError as err:
            raise ReaderStudyError(f"{path}: not UTF-8 text ({err})") from None
    if problems:
        raise ReaderStudyError(f"{path}: {len(problems)} bad row{'s' if len(problems) > 1 else ''}: {_too_many(problems)}")
    if not rows:
        raise ReaderStudyError(f"{path}: no complete answers (rows with both a before and an after answer)")
    notes = []
    if skipped:
        notes.append(f"{len(skipped)} unfinished row{'s' if len(skipped) > 1 else ''} left out "
                     f"(lines {', '.join(map(str, skipped[:MAX_LISTED]))}{', ...' if len(skipped) > MAX_LISTED else ''})")
    return rows, notes


def read_labels(path) -> dict[str, dict[str, int]]:
    """``{file: {"right": 0|1, "left": 0|1}}`` from a dataset's ``labels.csv`` (or its folder)."""
    from hipcad.runtime.evaluation.dataset import LABELS_FILE, DatasetError, load_dataset

    path = Path(path)
    if path.is_dir():
        path = path / LABELS_FILE
    if not path.is_file():
        raise ReaderStudyError(f"{path}: no such labels file")
    try:
        ds = load_dataset(path.parent, labels=path.name, regions=None, check_files=False)
    except DatasetError as err:
        raise ReaderStudyError(str(err)) from None
    return {rec.file: {s: int(rec.sides[s].fracture) for s in SIDES} for rec in ds.images}


def apply_labels(rows: list[Response], labels: dict[str, dict[str, int]], source: str = "labels") -> None:
    """Fill each empty ``truth`` from ``labels`` (full path first, then a unique basename).

    Raises :class:`ReaderStudyError` listing rows whose file is not in the labels, whose
    basename is ambiguous there, or whose own truth contradicts the labels.
    """
    by_base: dict[str, list[str]] = {}
    for f in labels:
        by_base.setdefault(PurePosixPath(f).name, []).append(f)
    problems: list[str] = []
    for r in rows:
        key = r.file if r.file in labels else None
        if key is None:
            cands = by_base.get(PurePosixPath(r.file).name, [])
            if len(cands) == 1:
                key = cands[0]
            elif len(cands) > 1:
                problems.append(f"line {r.line}: {r.file} matches several files in {source} ({', '.join(sorted(cands)[:3])})")
                continue
        if key is None:
            if r.truth is None:
                problems.append(f"line {r.line}: {r.file} is not in {source}")
            continue
        truth = labels[key][r.side]
        if r.truth is None:
            r.truth = truth
        elif r.truth != truth:
            problems.append(f"line {r.line}: truth {r.truth} for {r.file} {r.side} contradicts {source} ({truth})")
    if problems:
        raise ReaderStudyError(f"{len(problems)} row{'s' if len(problems) > 1 else ''} do not match the labels: {_too_many(problems)}")


def _check_truth(rows: list[Response], path) -> None:
    missing = [f"line {r.line} ({r.file} {r.side})" for r in rows if r.truth is None]
    if missing:
        raise ReaderStudyError(
            f"{path}: {len(missing)} row{'s' if len(missing) > 1 else ''} without truth (give --labels DATASET/labels.csv): "
            + _too_many(missing))


# -- statistics ------------------------------------------------------------------------------------

def _wilcoxon_counts(n: int) -> list[int]:
    """Number of sign assignments of ranks 1..n giving each rank sum W+ = 0..n(n+1)/2."""
    counts = [1] + [0] * (n * (n + 1) // 2)
    top = 0
    for k in range(1, n + 1):
        top += k
        for s in range(top, k - 1, -1):
            counts[s] += counts[s - k]
    return counts


def _midranks(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(a, kind="stable")
    x = a[order]
    starts = np.concatenate([[0], np.nonzero(np.diff(x))[0] + 1]) if x.size else np.array([], int)
    ends = np.concatenate([starts[1:], [x.size]]) if x.size else np.array([], int)
    ranks = np.empty(x.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks, (ends - starts).astype(np.float64)


def wilcoxon_signed_rank(d) -> dict:
    """Two-sided Wilcoxon signed-rank test of the paired differences ``d`` (after - before).

    Follows ``scipy.stats.wilcoxon(d)`` with its defaults (``zero_method="wilcox"``,
    ``correction=False``, ``alternative="two-sided"``, ``method="auto"``) as scipy 1.17.1
    implements them (``scipy/stats/_wilcoxon.py``):

    * zero differences are dropped; the absolute non-zero differences get midranks;
      ``statistic = min(W+, W-)``;
    * ``len(d) > 50`` (zeros included) -> ``"asymptotic"``;
    * otherwise, no zeros and no tied |d| -> ``"exact"``: the exact null distribution of W+,
      ``p = min(1, 2·min(P(W+ <= w), P(W+ >= w)))``;
    * otherwise, ``len(d) <= 13`` -> ``"exact-permutation"``: scipy runs a permutation test that
      is exhaustive for n <= 13 (2**n <= 9999 resamples): all 2**n sign flips of ``d``,
      ``p = 2·min(P(null <= W+ + g), P(null >= W+ - g))``, ``g = 100·eps·W+``, clipped to 1;
      (scipy raises for a single tied/zero difference; here that gives p = 1);
    * otherwise ``"asymptotic"``: ``z = (W+ - n(n+1)/4) / sqrt((n(n+1)(2n+1) - Σ(t³-t)/2) / 24)``
      over the n non-zero differences (tie correction, no continuity correction),
      ``p = 2·Φ(-|z|)``. With every difference zero, z and p are NaN (as scipy).

    Returns ``{"statistic", "p_value", "method", "n" (differences), "n_nonzero", "n_zero",
    "ties", "w_plus", "w_minus", "z" (asymptotic only)}``. Compute ``d`` so that equal
    differences are equal floats (for instance ``(correct_after - correct_before) / n``):
    ties decide the method.
    """
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    if d.size == 0:
        raise ValueError("no differences")
    if not np.all(np.isfinite(d)):
        raise ValueError("the differences contain NaN or infinite values")
    n_all = int(d.size)
    nz = d[d != 0]
    n = int(nz.size)
    ranks, tie_sizes = _midranks(np.abs(nz))
    ties = bool(np.any(tie_sizes > 1))
    w_plus = float(ranks[nz > 0].sum())
    w_minus = float(ranks[nz < 0].sum())
    out = {"statistic": min(w_plus, w_minus), "n": n_all, "n_nonzero": n, "n_zero": n_all - n, "ties": ties,
           "w_plus": w_plus, "w_minus": w_minus}

    if n_all <= 50 and n == n_all and not ties:
        counts = _wilcoxon_counts(n)
        w = int(round(w_plus))
        total = 1 << n
        cdf = Fraction(sum(counts[: w + 1]), total)
        sf = Fraction(sum(counts[w:]), total)
        out.update(method="exact", p_value=float(min(Fraction(1), 2 * min(cdf, sf))))
        return out

    if n_all <= 13:
        signs = ((np.arange(1 << n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)
        null = signs.astype(np.float64) @ ranks if n else np.zeros(1)
        gamma = abs(np.finfo(np.float64).eps * 100 * w_plus)
        less = np.count_nonzero(null <= w_plus + gamma) / null.size
        greater = np.count_nonzero(null >= w_plus - gamma) / null.size
        out.update(method="exact-permutation", p_value=float(min(1.0, 2 * min(less, greater))))
        return out

    mean = n * (n + 1) / 4.0
    var = (n * (n + 1) * (2 * n + 1) - np.sum(tie_sizes ** 3 - tie_sizes) / 2.0) / 24.0
    se = math.sqrt(var) if var > 0 else 0.0
    if se == 0:
        z = p = float("nan")
    else:
        z = (w_plus - mean) / se
        p = math.erfc(abs(z) / math.sqrt(2.0))  # 2·Φ(-|z|)
        z = -abs(z)
    out.update(method="asymptotic", p_value=float(p), z=float(z))
    return out


_FISHER_RTOL = 1e-14  # scipy.stats.fisher_exact: a table counts when P(x) <= P(observed)·(1 + 1e-14)
_EXACT_TIE_MAX_N = 300_000  # up to this total, near-ties are settled with exact integers (math.comb)


def fisher_exact(table) -> dict:
    """Two-sided Fisher's exact test of a 2x2 table of counts, as ``scipy.stats.fisher_exact``.

    With the margins fixed the first cell follows the hypergeometric distribution. The p-value
    is the sum of the probabilities of every table no more likely than the observed one, with
    scipy's relative tolerance: table ``x`` counts when ``P(x) <= P(observed)·(1 + 1e-14)``.
    A zero row or column total gives ``p = 1`` and odds ratio NaN; the odds ratio is the sample
    one ``a·d / (b·c)``, infinite when ``b`` or ``c`` is 0 (both as scipy).

    How: the probabilities relative to the mode come from the exact ratios of neighbouring
    hypergeometric terms, ``P(x+1)/P(x) = (n1-x)(c1-x) / ((x+1)(n2-c1+x+1))`` (accumulated in
    log space outward from the mode), normalised by their sum, which is 1/P(mode). Tables whose
    probability is within 1e-9 (relative) of the observed one are compared exactly: with the
    table's symmetry (``n1 == n2`` or ``2·c1 == N``: the mirror table is exactly as likely) or
    else with the integers ``math.comb(n1, x)·math.comb(n2, c1-x)`` (up to N = 300 000; beyond,
    the floating-point comparison stands). Fast for any table size (milliseconds at 37 200 answers).

    Returns ``{"odds_ratio", "p_value", "table"}``.
    """
    t = [[int(v) for v in row] for row in table]
    if len(t) != 2 or any(len(row) != 2 for row in t):
        raise ValueError("the table must be 2x2")
    if any(v < 0 for row in t for v in row):
        raise ValueError("the table must hold non-negative counts")
    (a, b), (c, d) = t
    if 0 in (a + b, c + d, a + c, b + d):
        return {"odds_ratio": float("nan"), "p_value": 1.0, "table": t}
    odds = (a * d / (b * c)) if (b > 0 and c > 0) else float("inf")
    n1, n2, c1 = a + b, c + d, a + c  # row totals, first column total
    N = n1 + n2
    if N >= 2 ** 31:
        raise ValueError("the table is too large")
    lo, hi = max(0, c1 - n2), min(c1, n1)

    # log P(x)/P(mode) for x = lo..hi
    j = np.arange(lo, hi, dtype=np.int64)
    num = (n1 - j) * (c1 - j)
    den = (j + 1) * (n2 - c1 + j + 1)
    step = np.log1p((num - den).astype(np.float64) / den.astype(np.float64))  # log P(j+1)/P(j)
    mode = min(max(((c1 + 1) * (n1 + 1)) // (N + 2), lo), hi)
    k = mode - lo
    logw = np.zeros(hi - lo + 1)
    logw[k + 1:] = np.cumsum(step[k:])
    logw[:k] = -np.cumsum(step[:k][::-1])[::-1]

    i_obs = a - lo
    diff = logw - logw[i_obs]
    tol = math.log1p(_FISHER_RTOL)
    include = diff <= tol
    near = [i for i in np.nonzero(np.abs(diff - tol) < 1e-9)[0] if i != i_obs]
    if near:
        exact = N <= _EXACT_TIE_MAX_N
        scale = round(1 / _FISHER_RTOL)
        w_obs = None
        for i in near:
            x = int(i) + lo
            if (n1 == n2 and x == c1 - a) or (2 * c1 == N and x == n1 - a):
                include[i] = True  # the mirror image of the observed table: exactly as likely
            elif exact:
                if w_obs is None:
                    w_obs = math.comb(n1, a) * math.comb(n2, c1 - a)
                w = math.comb(n1, x) * math.comb(n2, c1 - x)
                include[i] = w * scale <= w_obs * (scale + 1)
    w = np.exp(logw)  # <= 1 (the mode is 1)
    p = float(np.sum(w[include]) / np.sum(w))
    return {"odds_ratio": float(odds), "p_value": min(1.0, p), "table": t}


# -- analysis --------------------------------------------------------------------------------------

def _phase(rows: list[Response], phase: str, ci_method: str) -> dict:
    y = [r.truth for r in rows]
    pred = [getattr(r, phase) for r in rows]
    conf = confusion_counts(y, pred)
    out = rates_from_confusion(**conf, ci_method=ci_method)
    out["correct"] = conf["tp"] + conf["tn"]
    out["confusion"] = conf
    return out


def analyse(rows: list[Response], ci_method: str = "wald") -> dict:
    """Per-reader and pooled figures and the two tests (see the module docstring)."""
    if not rows:
        raise ReaderStudyError("no answers to analyse")
    if any(r.truth is None for r in rows):
        raise ReaderStudyError("some answers have no truth")
    by_reader: dict[str, list[Response]] = {}
    for r in rows:
        by_reader.setdefault(r.reader, []).append(r)

    readers, diffs = [], []
    for name, rs in by_reader.items():
        before, after = _phase(rs, "before", ci_method), _phase(rs, "after", ci_method)
        n = len(rs)
        diff = (after["correct"] - before["correct"]) / n  # equal changes -> equal floats
        diffs.append(diff)
        readers.append({"reader": name, "n": n, "images": len({r.study_id or r.file for r in rs}),
                        "before": before, "after": after, "accuracy_change": diff})

    before, after = _phase(rows, "before", ci_method), _phase(rows, "after", ci_method)
    n = len(rows)
    table = [[after["correct"], n - after["correct"]], [before["correct"], n - before["correct"]]]
    fisher = fisher_exact(table)
    fisher.update(rows=["after", "before"], columns=["correct", "incorrect"])
    if math.isinf(fisher["odds_ratio"]):
        fisher["note"] = "the odds ratio is infinite: no incorrect answer after the CAD or no correct one before"
    wil = wilcoxon_signed_rank(diffs)
    notes = []
    if wil["n_nonzero"] == 0:
        notes.append("every reader's accuracy is unchanged: the Wilcoxon test has no non-zero difference")
    if len(readers) < 6:
        notes.append(f"only {len(readers)} reader{'s' if len(readers) > 1 else ''}: the two-sided Wilcoxon test "
                     "cannot reach p < 0.05 with fewer than 6 readers")
    acc_b = [x["before"]["accuracy"]["value"] for x in readers]
    acc_a = [x["after"]["accuracy"]["value"] for x in readers]
    return {
        "n_readers": len(readers),
        "n_answers": n,
        "n_images": len({r.study_id or r.file for r in rows}),
        "ci_method": ci_method,
        "readers": readers,
        "pooled": {"n": n, "before": before, "after": after,
                   "mean_reader_accuracy": {"before": float(np.mean(acc_b)), "after": float(np.mean(acc_a))},
                   "median_accuracy_change": float(np.median(diffs))},
        "wilcoxon": wil,
        "fisher": fisher,
        "notes": notes,
    }


# -- command line ----------------------------------------------------------------------------------

def _jsonable(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    return obj


def _pct(m: dict) -> str:
    if m["value"] is None:
        return "n/a"
    lo, hi = m["ci95"]
    return f"{100 * m['value']:5.1f} ({100 * lo:5.1f}-{100 * hi:5.1f})"


def _p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "= n/a"
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def _table(result: dict) -> str:
    name_w = max([6] + [len(r["reader"]) for r in result["readers"]])
    head = (f"{'reader':<{name_w}}  {'n':>5}  {'accuracy before % (95% CI)':<26}  {'accuracy after % (95% CI)':<26}  "
            f"{'change':>7}  {'sensitivity % before -> after':<30}  {'specificity % before -> after':<30}")
    lines = [head, "-" * len(head)]

    def row(name, n, b, a, change):
        return (f"{name:<{name_w}}  {n:>5}  {_pct(b['accuracy']):<26}  {_pct(a['accuracy']):<26}  "
                f"{100 * change:+6.1f}  {_short(b['sensitivity'], a['sensitivity']):<30}  {_short(b['specificity'], a['specificity']):<30}")

    for r in result["readers"]:
        lines.append(row(r["reader"], r["n"], r["before"], r["after"], r["accuracy_change"]))
    p = result["pooled"]
    lines.append("-" * len(head))
    change = p["after"]["accuracy"]["value"] - p["before"]["accuracy"]["value"]
    lines.append(row("pooled", p["n"], p["before"], p["after"], change))
    m = p["mean_reader_accuracy"]
    def count(k, word):
        return f"{k} {word}{'' if k == 1 else 's'}"

    lines.append(f"\n{count(result['n_readers'], 'reader')}, {count(result['n_images'], 'image')}, "
                 f"{count(result['n_answers'], 'answer')} (hips); "
                 f"{result['ci_method'].capitalize()} 95% CIs")
    lines.append(f"mean reader accuracy: {100 * m['before']:.1f}% -> {100 * m['after']:.1f}%")
    w = result["wilcoxon"]
    zpart = f", z = {w['z']:.3f}" if "z" in w and w["z"] is not None and math.isfinite(w["z"]) else ""
    lines.append(f"Wilcoxon signed-rank (per-reader accuracy after - before, two-sided, {w['method']}, "
                 f"{w['n_nonzero']} non-zero of {w['n']}): W = {w['statistic']:g}{zpart}, p {_p(w['p_value'])}")
    f = result["fisher"]
    (ca, ia), (cb, ib) = f["table"]
    odds = "inf" if math.isinf(f["odds_ratio"]) else ("n/a" if math.isnan(f["odds_ratio"]) else f"{f['odds_ratio']:.3f}")
    lines.append(f"Fisher's exact (pooled correct/incorrect, after {ca}/{ia} vs before {cb}/{ib}, two-sided): "
                 f"odds ratio = {odds}, p {_p(f['p_value'])}")
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _short(b: dict, a: dict) -> str:
    if b["value"] is None or a["value"] is None:
        return "n/a"
    return f"{100 * b['value']:5.1f} -> {100 * a['value']:5.1f}"


def reader_study_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hipcad reader-study",
        description="Analyse the kiosk's read-first answers (reader-study.csv): accuracy, sensitivity and "
        "specificity per reader and pooled, before and after the CAD, with Wald 95%% CIs; Wilcoxon "
        "signed-rank test on the per-reader accuracies and Fisher's exact test on the pooled answers. "
        "Exit status 1 on bad input.",
    )
    parser.add_argument("responses", metavar="RESPONSES.csv", help="the kiosk's reader-study.csv")
    parser.add_argument("--labels", metavar="LABELS.csv",
                        help="DATASET/labels.csv (or the DATASET folder) supplying the truth where the CSV has none")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--ci", choices=CI_METHODS, default="wald",
                        help="interval of the proportions (default: wald, as the paper)")
    parser.add_argument("--skip-incomplete", action="store_true",
                        help="leave out rows without a before or after answer instead of failing")
    args = parser.parse_args(argv)

    try:
        rows, notes = read_responses(args.responses, skip_incomplete=args.skip_incomplete)
        if args.labels:
            apply_labels(rows, read_labels(args.labels), source=str(args.labels))
        _check_truth(rows, args.responses)
        result = analyse(rows, ci_method=args.ci)
    except (HipcadError, ValueError) as err:
        print(f"hipcad reader-study: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    result["notes"] = notes + result["notes"]
    if args.json:
        print(json.dumps(_jsonable(result)))
    else:
        print(_table(result))
    return 0
