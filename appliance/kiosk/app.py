"""``hipcad kiosk``: the screen beside the modality. Reads the result store; never touches the backend.

``create_app(config=None)`` is a plain Flask app factory (no threads); ``main`` serves it with
waitress on 127.0.0.1 unless configured otherwise (then authentication is required).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys

from flask import Flask, Response, abort, g, jsonify, redirect, render_template, request, send_file, session, url_for

from hipcad.runtime.errors import HipcadError

from hipcad.appliance.kiosk import prometheus as metrics

from hipcad.appliance.kiosk import views as presenter

from hipcad.appliance.kiosk import readfirst

from hipcad.appliance.kiosk import security
from hipcad.appliance.config import Config, ConfigError, load_config
from hipcad.appliance.storage.files import DataDir
from hipcad.appliance.storage.store import Store

log = logging.getLogger("hipcad.kiosk")


def create_app(config: Config | None = None) -> Flask:
    config = config or load_config()
    security.require_safe_bind(config)
    app = Flask(__name__)
    app.json = security.SafeJSON(app)
    app.config.update(
        SECRET_KEY=security.session_secret(config),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="hipcad_session",
        MAX_CONTENT_LENGTH=64 * 1024,
        HIPCAD=config,
    )
    data = DataDir(config.data_dir)
    model_fallback = _model_from_config(config)
    security.install(app, config)

    def store() -> Store:
        if "store" not in g:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            g.store = Store(config.db_path)
        return g.store

    @app.teardown_appcontext
    def close_store(exc):
        s = g.pop("store", None)
        if s is not None:
            s.close()

    def current_health() -> dict:
        return presenter.health(store(), config, model_fallback)

    def cad_visible(item_id: int) -> bool:
        return not config.read_first or readfirst.stage(store(), session.get("reader"), item_id) != "before"

    def study_context(row) -> dict:
        visible = cad_visible(row["id"])
        context = {"item": presenter.item_detail(row, visible), "patient": presenter.patient_view(row),
                   "stage": None, "answers": {}}
        if config.read_first and row["status"] == "done":
            reader = session.get("reader")
            context["stage"] = readfirst.stage(store(), reader, row["id"])
            context["answers"] = {k: dict(v) for k, v in store().answers(reader, row["id"]).items()} if reader else {}
        return context

    def page(template: str, **context):
        h = current_health()
        return render_template(template, health=h, banners=presenter.banners(h), version=version(h),
                               read_first=config.read_first, reader=session.get("reader", ""), **context)

    def version(h: dict) -> str:
        keys = ",".join(b["key"] for b in presenter.banners(h))
        dicom = h["dicom"]
        listener = dicom["listener"]
        pacs = ",".join(f"{d['queue']}/{d['sent']}/{d['last_error_at']}" for d in dicom["destinations"])
        return (f"{store().version()}|{keys}|{h['queue']['queued'] + h['queue']['processing']}"
                f"|{listener['up']}:{listener['received']}|{pacs}")

    def row_or_404(item_id: int):
        row = store().get(item_id)
        if row is None or row["status"] not in ("done", "failed"):
            abort(404)
        return row

    # -- pages ------------------------------------------------------------------------------
    @app.get("/")
    def index():
        rows = store().finished(limit=config.history_size)
        newest = study_context(rows[0]) if rows else None
        history = [{"item": presenter.item_view(r, cad_visible(r["id"])), "patient": presenter.patient_view(r)} for r in rows]
        return page("index.html", newest=newest, history=history, live=True)

    @app.get("/study/<int:item_id>")
    def study(item_id: int):
        return page("study.html", study=study_context(row_or_404(item_id)), live=False)

    @app.post("/study/<int:item_id>/answer")
    def answer(item_id: int):
        row = row_or_404(item_id)
        if not config.read_first or row["status"] != "done":
            abort(404)
        try:
            reader, phase, verdicts = readfirst.parse_answer(request.form)
        except readfirst.AnswerError as err:
            abort(400, description=str(err))
        expected = readfirst.stage(store(), reader, item_id)
        if phase != expected:
            abort(409, description=f"this study expects the {expected} answer from {reader}")
        store().record_answer(reader, item_id, phase, verdicts)
        session["reader"] = reader
        log.info("reader answer recorded: study %d, phase %s", item_id, phase)
        return redirect(request.form.get("next") if request.form.get("next") == "/" else url_for("study", item_id=item_id), 303)

    @app.get("/results/<int:item_id>/<any(overlay, image):kind>.jpg")
    def result_image(item_id: int, kind: str):
        row = row_or_404(item_id)
        if row["status"] != "done" or (kind == "overlay" and not cad_visible(item_id)):
            abort(404)
        path = data.overlay(item_id) if kind == "overlay" else data.image(item_id)
        if not path.is_file():
            abort(404)
        return send_file(path, mimetype="image/png" if path.suffix == ".png" else "image/jpeg", max_age=0)

    @app.get("/export/reader-study.csv")
    def reader_study():
        return Response(readfirst.reader_study_csv(store()), mimetype="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="reader-study.csv"'})

    # -- machine interfaces ---------------------------------------------------------------------
    @app.get("/api/health")
    def api_health():
        h = current_health()
        return jsonify(h), 200 if h["worker"]["up"] else 503

    @app.get("/api/version")
    def api_version():
        return jsonify({"version": version(current_health())})

    @app.get("/api/results")
    def api_results():
        limit = min(max(request.args.get("limit", 50, type=int), 1), 500)
        before = request.args.get("before", None, type=int)
        rows = store().finished(limit=limit, before_id=before)
        return jsonify({"results": [presenter.item_view(r, cad_visible(r["id"])) for r in rows]})

    @app.get("/api/results/<int:item_id>")
    def api_result(item_id: int):
        return jsonify(presenter.item_detail(row_or_404(item_id), cad_visible(item_id)))

    @app.get("/metrics")
    def prometheus():
        return Response(metrics.render(store(), current_health()), content_type=metrics.CONTENT_TYPE)

    @app.errorhandler(400)
    @app.errorhandler(404)
    @app.errorhandler(409)
    def error_page(err):
        if request.path.startswith("/api/"):
            return jsonify({"error": err.description}), err.code
        return render_template("error.html", error=err), err.code

    app.jinja_env.filters["clock"] = presenter.clock
    app.jinja_env.filters["day"] = presenter.day
    return app


def _model_from_config(config: Config) -> dict | None:
    """The configured model's description (manifest only), for the banner before the worker ran."""
    try:
        from hipcad.runtime.model.bundle import load_bundle

        return load_bundle(config.model or None).describe()
    except HipcadError:
        return None


def serve(app: Flask, config: Config) -> None:
    from waitress import create_server

    server = create_server(app, host=config.kiosk_bind, port=config.kiosk_port, threads=config.kiosk_threads,
                           ident="hipcad")
    log.info("kiosk listening on http://%s:%s/", config.kiosk_bind, server.effective_port)
    print(f"kiosk: http://{config.kiosk_bind}:{server.effective_port}/", flush=True)
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hipcad kiosk",
        description="Serve the results screen (newest study first, history, read-first mode, JSON API, /metrics). "
        "Listens on 127.0.0.1 unless kiosk_bind says otherwise; any other address requires kiosk_password_hash.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration (see systemd/hipcad.toml.example)")
    parser.add_argument("--hash-password", action="store_true",
                        help="read a password (prompt, or stdin when not a terminal) and print the hash for kiosk_password_hash")
    args = parser.parse_args(argv)
    if args.hash_password:
        from werkzeug.security import generate_password_hash

        password = getpass.getpass("kiosk password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        if len(password) < 8:
            print("hipcad kiosk: use a password of at least 8 characters", file=sys.stderr)
            return 2
        print(generate_password_hash(password))
        return 0
    try:
        config = load_config(args.config)
        app = create_app(config)
    except ConfigError as err:
        print(f"hipcad kiosk: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, config.log_level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(app, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
