"""The JSON API over the results (newest first; no patient identity)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from hipcad.appliance.kiosk import context as ctx
from hipcad.appliance.kiosk import security, views

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/results")
def results():
    limit = min(max(request.args.get("limit", 50, type=int), 1), 500)
    before = request.args.get("before", None, type=int)
    rows = ctx.store().finished(limit=limit, before_id=before)
    results = [views.item_view(r, ctx.cad_visible(r["id"])) for r in rows]
    security.accessed("listed studies", [r["id"] for r in rows])
    return jsonify({"results": [_without_file(r) for r in results]})


@bp.get("/results/<int:item_id>")
def result(item_id: int):
    view = views.item_detail(ctx.row_or_404(item_id), ctx.cad_visible(item_id))
    security.accessed("opened study (API)", [item_id])
    return jsonify(_without_file(view))


def _without_file(view: dict) -> dict:
    """The name a file arrived with can hold a patient's name or MRN: only for a signed-in reader."""
    if security.signed_in() is None:
        view.pop("file", None)
    return view
