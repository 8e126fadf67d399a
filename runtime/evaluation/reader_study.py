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
from pathlib import Path, PurePosixPath

import numpy as np

from hipcad.runtime.errors import HipcadError
from hipcad.runtime.evaluation.paired_tests import fisher_exact, wilcoxon_signed_rank
from hipcad.runtime.evaluation.stats import CI_METHODS, confusion_counts, rates_from_confusion
from hipcad.runtime.inference.sides import SIDES

__all__ = [
    "RESPONSE_FIELDS",
    "ReaderStudyError",
    "Response",
    "read_responses",
    "read_labels",
    "apply_labels",
    "analyse",
    "main",
]

RESPONSE_FIELDS = ("reader", "study_id", "file", "side", "truth", "before", "after", "before_at", "after_at")
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


def main(argv: list[str] | None = None) -> int:
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
