"""What every kiosk request shares: the configuration (set on the app by the factory), one store
connection per request, the box's status, whether a study's CAD output may be shown (read-first
mode), and the page template with its banners."""

from __future__ import annotations

from flask import abort, current_app, g, render_template, session

from hipcad.appliance import status
from hipcad.appliance.config import Config
from hipcad.appliance.kiosk import reader_answers, views
from hipcad.appliance.storage.files import DataDir
from hipcad.appliance.storage.store import Store

CONFIG_KEY = "HIPCAD"
BUNDLE_KEY = "hipcad.bundle"  # app.extensions: the configured bundle, loaded once by create_app


def config() -> Config:
    return current_app.config[CONFIG_KEY]


def data() -> DataDir:
    return DataDir(config().data_dir)


def store() -> Store:
    if "store" not in g:
        g.store = Store(config().db_path)
    return g.store


def close_store(exc=None) -> None:
    s = g.pop("store", None)
    if s is not None:
        s.close()


def init_app(app) -> None:
    app.teardown_appcontext(close_store)


def bundle():
    """The configured model bundle (its manifest only, loaded with the configured trust when the app
    was made), or None when it cannot be read."""
    return current_app.extensions.get(BUNDLE_KEY)


def health() -> dict:
    return status.health(store(), config(), current_app.config.get("HIPCAD_MODEL"))


def cad_visible(item_id: int) -> bool:
    return not config().read_first or reader_answers.stage(store(), session.get("reader"), item_id) != "before"


def row_or_404(item_id: int):
    row = store().get(item_id)
    if row is None or row["status"] not in ("done", "failed"):
        abort(404)
    return row


def version(h: dict, db: Store | None = None) -> str:
    """Changes whenever anything on the page would: the live page is told of it (/api/events) or
    polls it (/api/version). ``db``: a store outside a request (a news stream)."""
    keys = ",".join(b["key"] for b in views.banners(h))
    dicom = h["dicom"]
    listener = dicom["listener"]
    pacs = ",".join(f"{d['queue']}/{d['sent']}/{d['last_error_at']}" for d in dicom["destinations"])
    return (f"{(db or store()).version()}|{keys}|{h['backend'].get('name')}|{h['queue']['queued'] + h['queue']['processing']}"
            f"|{listener['up']}:{listener['received']}|{pacs}")


def study_context(row) -> dict:
    visible = cad_visible(row["id"])
    context = {"item": views.item_detail(row, visible), "patient": views.patient_view(row), "stage": None, "answers": {}}
    if config().read_first and row["status"] == "done":
        reader = session.get("reader")
        context["stage"] = reader_answers.stage(store(), reader, row["id"])
        context["answers"] = {k: dict(v) for k, v in store().answers(reader, row["id"]).items()} if reader else {}
    return context


def page(template: str, **context):
    h = health()
    return render_template(template, health=h, banners=views.banners(h), version=version(h),
                           inference=views.inference_place(h["backend"]),
                           read_first=config().read_first, reader=session.get("reader", ""),
                           push=config().kiosk_push_streams > 0, **context)
