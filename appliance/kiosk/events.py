"""``/api/events``: news for the live page, pushed as Server-Sent Events.

Each event is the page's version (the one ``/api/version`` gives): sent when the stream opens,
whenever it changes, and again every :data:`HEARTBEAT_S` as a heartbeat. The stream looks for
news every :data:`POLL_S` with one ``PRAGMA data_version`` (has another connection committed?)
and computes the version only then, or at least every :data:`RECHECK_S` (the worker-down banner
depends on time alone); a result is on screen a fraction of a second after the worker stored it
instead of up to 2 s later.

cheroot serves the kiosk with a fixed pool of threads (``kiosk_threads``) and a stream holds one
for as long as it is open, so:

- at most ``kiosk_push_streams`` streams at once; the next browser is answered 503 and polls
  ``/api/version`` every 2 s, as every browser did before (and as one without EventSource, or
  behind a proxy that buffers, still does);
- a browser that went away is noticed at the next write (the heartbeat): cheroot's write raises
  in the streaming thread and its WSGI gateway closes the response (freeing the slot);
- each stream ends after :data:`STREAM_MAX_S` and the browser reconnects after ``retry``, so no
  thread is held for ever by a peer that vanished without closing its connection;
- :func:`shutdown` ends them all before the server stops (the kiosk's SIGTERM).

cheroot sends each write at once (its socket writer flushes on every write, with or without TLS),
so an event is not held back in a buffer. A stream is not reader activity: it does not keep an
idle session signed in (:data:`.security.POLL_PATHS`).
"""

from __future__ import annotations

import json
import threading
import time

from flask import Blueprint, Response, current_app, jsonify

from hipcad.appliance import status
from hipcad.appliance.kiosk import context as ctx
from hipcad.appliance.storage.store import Store

bp = Blueprint("events", __name__, url_prefix="/api")

POLL_S = 0.05
RECHECK_S = 1.0
HEARTBEAT_S = 15.0
STREAM_MAX_S = 300.0
RETRY_MS = 1000
KEY = "hipcad_event_streams"


class Streams:
    """The open streams of one app: a bounded count, and an event that ends them all."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 1)
        self.slots = threading.BoundedSemaphore(self.limit)
        self.closing = threading.Event()


def init_app(app) -> None:
    """The app's :class:`Streams` (no thread is started here)."""
    app.extensions[KEY] = Streams(app.config[ctx.CONFIG_KEY].kiosk_push_streams)


def stop(app) -> None:
    """Tell every stream to end (within :data:`POLL_S`); safe in a signal handler of the main thread."""
    app.extensions[KEY].closing.set()


def shutdown(app, timeout: float = 2.0) -> None:
    """End every stream and wait (up to ``timeout``) until their responses are finished: call it
    before the server closes, or the streaming threads write into a closed server."""
    streams: Streams = app.extensions[KEY]
    streams.closing.set()
    deadline = time.monotonic() + timeout
    taken = 0
    while taken < streams.limit and streams.slots.acquire(timeout=max(deadline - time.monotonic(), 0)):
        taken += 1


@bp.get("/events")
def events():
    config = ctx.config()
    streams: Streams = current_app.extensions[KEY]
    if config.kiosk_push_streams <= 0 or streams.closing.is_set() or not streams.slots.acquire(blocking=False):
        why = "push is turned off" if config.kiosk_push_streams <= 0 else "all news streams are in use"
        return jsonify({"error": f"{why}: poll /api/version"}), 503
    release = _once(streams.slots.release)
    response = Response(_stream(config, current_app.config.get("HIPCAD_MODEL"), streams.closing),
                        mimetype="text/event-stream")
    response.call_on_close(release)  # also when the stream never started
    response.headers["X-Accel-Buffering"] = "no"  # a reverse proxy must not buffer it either
    return response


def _stream(config, model, closing: threading.Event):
    deadline = time.monotonic() + STREAM_MAX_S
    store = Store(config.db_path)
    try:
        yield f"retry: {RETRY_MS}\n\n"
        seen, checked, sent, sent_at = None, float("-inf"), None, float("-inf")
        while not closing.is_set():
            now = time.monotonic()
            if now >= deadline:
                return
            data_version = store.data_version()
            if data_version != seen or now - checked >= RECHECK_S:
                seen, checked = data_version, now
                version = ctx.version(status.health(store, config, model), store)
                if version != sent or now - sent_at >= HEARTBEAT_S:
                    sent, sent_at = version, now
                    yield f"event: version\ndata: {json.dumps({'version': version})}\n\n"
            closing.wait(POLL_S)
    finally:
        store.close()


def _once(fn):
    lock, done = threading.Lock(), []

    def call():
        with lock:
            if not done:
                done.append(True)
                fn()

    return call
