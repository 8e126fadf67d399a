"""Read-first mode (the paper's reader protocol): the reader answers per hip without the CAD, then
sees the CAD output and answers again. Both answers go into the store; ``reader-study.csv`` is
what ``hipcad reader-study`` reads."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime

from hipcad.appliance.storage.store import Store
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.inference.sides import SIDES

CSV_HEADER = ("reader", "study_id", "file", "side", "truth", "before", "after", "before_at", "after_at")
MAX_READER = 80


class AnswerError(HipcadError, ValueError):
    pass


def parse_answer(form) -> tuple[str, str, dict[str, int]]:
    """(reader, phase, {"right": 0|1, "left": 0|1}) from the answer form."""
    reader = " ".join((form.get("reader") or "").split())[:MAX_READER]
    if not reader:
        raise AnswerError("enter your name (or initials) as the reader")
    phase = form.get("phase")
    if phase not in ("before", "after"):
        raise AnswerError("unknown answer phase")
    verdicts = {}
    for side in SIDES:
        value = form.get(side)
        if value not in ("1", "0"):
            raise AnswerError(f"answer fracture or no fracture for the patient's {side} hip")
        verdicts[side] = int(value)
    return reader, phase, verdicts


def stage(store: Store, reader: str | None, item_id: int) -> str:
    """'before' (nothing answered: CAD hidden), 'after' (first answer given: CAD shown, asked
    again) or 'complete'."""
    if not reader:
        return "before"
    answers = store.answers(reader, item_id)
    if len(answers) < len(SIDES) or any(a["before"] is None for a in answers.values()):
        return "before"
    if any(a["after"] is None for a in answers.values()):
        return "after"
    return "complete"


def _cell(value) -> str:
    """A CSV cell a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds") if ts else ""


def reader_study_csv(store: Store, with_files: bool = True) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for row in store.all_answers():
        truth = json.loads(row["truth_json"]).get(row["side"]) if row["truth_json"] else None
        writer.writerow([_cell(v) for v in (row["reader"], row["item_id"], row["file"] if with_files else "", row["side"], truth,
                                             row["before"], row["after"], _when(row["before_at"]), _when(row["after_at"]))])
    return out.getvalue()
