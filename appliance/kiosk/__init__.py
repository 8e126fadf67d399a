"""The kiosk: the screen beside the modality. It reads the result store; it never touches the
backend or the inputs.

:func:`create_app` is a Flask app factory as in Flask's tutorial: the configuration is set on the
app and read back by the blueprints (:mod:`.pages`, :mod:`.readfirst`, :mod:`.api`,
:mod:`.health`, :mod:`.events`, :mod:`.prometheus`, :mod:`.admin`); :mod:`.security`, :mod:`.context`
and :mod:`.events` hook into it with ``init_app``. No thread is started here; :mod:`.cli` serves the
app with cheroot (HTTPS with ``kiosk_tls_cert``).
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask, jsonify, render_template, request

from hipcad.appliance.config import Config, load_config
from hipcad.appliance.kiosk import admin, api, context, events, health, login, pages, prometheus, readfirst, security
from hipcad.appliance.timefmt import clock, day
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.inference.verdict import score_words, threshold_words, verdict_words


def create_app(config: Config | None = None) -> Flask:
    config = config or load_config()
    security.require_safe_bind(config)
    bundle = _bundle_from_config(config)
    # instance_path given: Flask's search for one fails for a package mapped by package-dir (editable
    # installs); the kiosk keeps its state in the data folder
    app = Flask(__name__, instance_path=str(Path(config.data_dir).resolve()))
    app.json = security.SafeJSON(app)
    app.config.update(
        SECRET_KEY=security.session_secret(config),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="hipcad_session",
        MAX_CONTENT_LENGTH=64 * 1024,
        HIPCAD_MODEL=_describe(bundle),
    )
    app.config[context.CONFIG_KEY] = config
    app.extensions[context.BUNDLE_KEY] = bundle
    security.init_app(app, config)
    context.init_app(app)
    events.init_app(app)
    for blueprint in (login.bp, pages.bp, readfirst.bp, api.bp, health.bp, events.bp, prometheus.bp, admin.bp):
        app.register_blueprint(blueprint)
    for code in (400, 404, 409):
        app.register_error_handler(code, _error_page)
    app.jinja_env.filters["clock"] = clock
    app.jinja_env.filters["day"] = day
    app.jinja_env.filters["verdict_words"] = verdict_words
    # "probability 45 %" only for a calibrated bundle's number, else "score 0.45"
    app.jinja_env.filters["score_words"] = lambda value, calibrated: score_words(value, bool(calibrated))
    app.jinja_env.filters["threshold_words"] = lambda value, calibrated: threshold_words(value, bool(calibrated))
    return app


def _error_page(err):
    if request.path.startswith("/api/"):
        return jsonify({"error": err.description}), err.code
    return render_template("error.html", error=err), err.code


def _bundle_from_config(config: Config):
    """The configured model bundle (its manifest only), checked against the configured trust, loaded
    once for the app (:func:`context.bundle`: drift page, /metrics), or None when it cannot be read."""
    try:
        from hipcad.runtime.model.bundle import load_bundle

        return load_bundle(config.model or None, config.trust())
    except HipcadError:
        return None


def _describe(bundle) -> dict | None:
    """The configured model's description, for the banner before the worker ran."""
    try:
        return bundle.describe() if bundle is not None else None
    except HipcadError:
        return None
