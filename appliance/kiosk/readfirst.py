"""Read-first mode's routes (the paper's reader protocol): the reader's answer per hip before and
after seeing the CAD output, and the answers exported for ``hipcad reader-study``."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, abort, redirect, request, session, url_for

from hipcad.appliance.kiosk import context as ctx
from hipcad.appliance.kiosk import reader_answers, security

log = logging.getLogger("hipcad.kiosk")


bp = Blueprint("readfirst", __name__)


@bp.post("/study/<int:item_id>/answer")
def answer(item_id: int):
    row = ctx.row_or_404(item_id)
    if not ctx.config().read_first or row["status"] != "done":
        abort(404)
    form = request.form.to_dict()
    if security.signed_in():  # the answer is the signed-in reader's, whatever the form says
        form["reader"] = security.signed_in()
    try:
        reader, phase, verdicts = reader_answers.parse_answer(form)
    except reader_answers.AnswerError as err:
        abort(400, description=str(err))
    store = ctx.store()
    expected = reader_answers.stage(store, reader, item_id)
    if phase != expected:
        abort(409, description=f"this study expects the {expected} answer from {reader}")
    store.record_answer(reader, item_id, phase, verdicts)
    session["reader"] = reader
    log.info("reader answer recorded: study %d, phase %s", item_id, phase)
    return redirect(request.form.get("next") if request.form.get("next") == "/" else url_for("pages.study", item_id=item_id), 303)


@bp.get("/export/reader-study.csv")
def reader_study():
    security.accessed("exported the reader study", [])
    # file names can hold patient names: only in a signed-in reader's export
    return Response(reader_answers.reader_study_csv(ctx.store(), with_files=security.signed_in() is not None),
                    mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="reader-study.csv"'})
