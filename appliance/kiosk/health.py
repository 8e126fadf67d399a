"""``/api/health`` (200 while the worker is up and reading, else 503) and ``/api/version`` (what the live page polls)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from hipcad.appliance.kiosk import context as ctx

bp = Blueprint("health", __name__, url_prefix="/api")


@bp.get("/health")
def health():
    h = ctx.health()
    return jsonify(h), 503 if h["status"] == "down" else 200


@bp.get("/version")
def version():
    return jsonify({"version": ctx.version(ctx.health())})
