"""The pages a doctor reads: the newest study large with the history below, a page per study, and
the result images."""

from __future__ import annotations

from flask import Blueprint, abort, send_file

from hipcad.appliance.kiosk import context as ctx
from hipcad.appliance.kiosk import security, views

bp = Blueprint("pages", __name__)


@bp.get("/")
def index():
    rows = ctx.store().finished(limit=ctx.config().history_size)
    newest = ctx.study_context(rows[0]) if rows else None
    history = [{"item": views.item_view(r, ctx.cad_visible(r["id"])), "patient": views.patient_view(r)} for r in rows]
    security.accessed("listed studies", [r["id"] for r in rows])
    return ctx.page("index.html", newest=newest, history=history, live=True)


@bp.get("/study/<int:item_id>")
def study(item_id: int):
    row = ctx.row_or_404(item_id)
    security.accessed("opened study", [item_id])
    return ctx.page("study.html", study=ctx.study_context(row), live=False)


@bp.get("/results/<int:item_id>/<any('overlay', 'overlay-all', 'image'):kind>.jpg")
def result_image(item_id: int, kind: str):
    row = ctx.row_or_404(item_id)
    if row["status"] != "done" or (kind != "image" and not ctx.cad_visible(item_id)):
        abort(404)
    security.accessed(f"viewed the {kind} of study", [item_id])
    data = ctx.data()
    path = {"overlay": data.overlay, "overlay-all": data.overlay_all, "image": data.image}[kind](item_id)
    if not path.is_file():
        abort(404)
    return send_file(path, mimetype="image/png" if path.suffix == ".png" else "image/jpeg", max_age=0)
