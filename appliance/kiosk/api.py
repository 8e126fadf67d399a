"""The JSON API over the results (newest first; no patient identity)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from hipcad.appliance.kiosk import context as ctx
from hipcad.appliance.kiosk import views

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/results")
def results():
    limit = min(max(request.args.get("limit", 50, type=int), 1), 500)
    before = request.args.get("before", None, type=int)
    rows = ctx.store().finished(limit=limit, before_id=before)
    return jsonify({"results": [views.item_view(r, ctx.cad_visible(r["id"])) for r in rows]})


@bp.get("/results/<int:item_id>")
def result(item_id: int):
    return jsonify(views.item_detail(ctx.row_or_404(item_id), ctx.cad_visible(item_id)))
