"""The live page's news pushed as Server-Sent Events (/api/events): the version when the stream
opens, at every change, as a heartbeat; a bounded number of streams, each freeing its thread when
its browser goes away, also under cheroot (the kiosk's server)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from hipcad.appliance.config import ConfigError
from hipcad.appliance.kiosk import create_app, events
from hipcad.appliance.storage.store import Store
from tests.appliance.kiosk.test_kiosk import make_config, populate
from tests.appliance.support import free_port, kiosk_server, wait_for


def read_events(body, count: int) -> list[dict]:
    """The next ``count`` version events of a streamed body (an iterator of byte chunks)."""
    found, buffer = [], b""
    for chunk in body:
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            lines = dict(line.split(": ", 1) for line in block.decode().splitlines() if ": " in line)
            if lines.get("event") == "version":
                found.append(json.loads(lines["data"]))
                if len(found) == count:
                    return found
    raise AssertionError(f"the stream ended after {len(found)} events")


def add_result(config, n: int) -> None:
    store = Store(config.db_path)
    item = store.enqueue(f"{1000 + n:064x}", None, f"new-{n}.jpg", 10)
    store.finish(item, "done", result={"id": item, "status": "done", "sides": []}, total_ms=1.0)
    store.close()


def test_pushes_the_version_at_once_at_every_change_and_as_a_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setattr(events, "HEARTBEAT_S", 0.3)
    monkeypatch.setattr(events, "RECHECK_S", 0.1)
    config = make_config(tmp_path)
    populate(config)
    client = create_app(config).test_client()
    response = client.get("/api/events", buffered=False)
    try:
        assert response.status_code == 200 and response.mimetype == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-store" and "script-src 'self'" in response.headers["Content-Security-Policy"]
        body = iter(response.response)
        assert next(body).startswith(b"retry: ")
        (first,) = read_events(body, 1)
        assert first["version"] == client.get("/api/version").get_json()["version"]
        add_result(config, 1)
        (changed,) = read_events(body, 1)
        assert changed["version"] != first["version"]
        assert changed["version"] == client.get("/api/version").get_json()["version"]
        (beat,) = read_events(body, 1)  # nothing changed: the same version again, as a heartbeat
        assert beat == changed
    finally:
        response.close()


def test_streams_are_bounded_and_their_slots_come_back(tmp_path, monkeypatch):
    monkeypatch.setattr(events, "STREAM_MAX_S", 0.5)
    config = make_config(tmp_path, kiosk_push_streams=1)
    populate(config)
    client = create_app(config).test_client()
    first = client.get("/api/events", buffered=False)
    refused = client.get("/api/events")
    assert refused.status_code == 503 and "poll /api/version" in refused.get_json()["error"]
    assert client.get("/api/version").status_code == 200 and client.get("/").status_code == 200
    first.close()  # the browser went away before the stream ended: the slot is free again
    second = client.get("/api/events", buffered=False)
    assert second.status_code == 200
    # a stream ends by itself after STREAM_MAX_S (the browser reconnects), freeing its slot
    started = time.monotonic()
    assert read_events(iter(second.response), 1)
    b"".join(second.response)  # returns: the stream ended by itself
    assert time.monotonic() - started < 10
    second.close()
    third = client.get("/api/events", buffered=False)
    assert third.status_code == 200
    third.close()


def test_push_can_be_turned_off_and_is_bounded_by_the_threads(tmp_path):
    config = make_config(tmp_path, kiosk_push_streams=0)
    populate(config)
    client = create_app(config).test_client()
    assert client.get("/api/events").status_code == 503
    assert 'data-push="0"' in client.get("/").get_data(as_text=True)
    assert 'data-push="1"' in create_app(make_config(tmp_path)).test_client().get("/").get_data(as_text=True)
    with pytest.raises(ConfigError, match="kiosk_push_streams"):
        make_config(tmp_path, kiosk_threads=4, kiosk_push_streams=3)


@contextmanager
def served_kiosk(config):
    with kiosk_server(config) as url:
        yield int(url.rsplit(":", 1)[1])


def open_stream(port: int) -> tuple[socket.socket, bytes]:
    """A raw HTTP/1.1 request for /api/events, and what arrived up to its first event."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
    return sock, receive_until(sock, lambda data: b"event: version" in data)


def receive_until(sock: socket.socket, done) -> bytes:
    data = b""
    while not done(data):
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"the stream ended: {data[-200:]!r}")
        data += chunk
    return data


def versions(data: bytes) -> list[str]:
    return [json.loads(line[len(b"data: "):])["version"] for line in data.splitlines() if line.startswith(b"data: ")]


def status_of(port: int, path: str) -> int:
    """The status of a GET (the body is not read: a news stream would not end)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_under_cheroot_events_are_not_buffered_and_a_closed_browser_frees_its_thread(tmp_path, monkeypatch):
    """cheroot holds a thread per open stream: the bound leaves threads for pages, an event is
    sent at once (not held until a buffer fills), and a browser that closed its connection gives
    its slot back at the next heartbeat."""
    monkeypatch.setattr(events, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(events, "RECHECK_S", 0.1)
    config = make_config(tmp_path, kiosk_threads=4, kiosk_push_streams=2)
    populate(config)
    with served_kiosk(config) as port:
        a, first = open_stream(port)
        b, _ = open_stream(port)
        assert first.startswith(b"HTTP/1.1 200") and b"text/event-stream" in first
        assert b"retry: " in first  # sent at once, not held in a buffer
        # both streams hold a thread each; the other two still serve pages and the API
        assert status_of(port, "/api/events") == 503
        assert status_of(port, "/") == 200 and status_of(port, "/api/version") == 200
        (before,) = versions(first)
        add_result(config, 2)
        changed = receive_until(a, lambda data: any(v != before for v in versions(data)))
        assert versions(changed)[-1] != before
        a.close()
        b.close()
        # the closed browsers' threads and slots come back (noticed when the heartbeat is written)
        wait_for(lambda: status_of(port, "/api/events") == 200, 20, what="a free news stream after the browsers left")


def test_the_kiosk_stops_cleanly_with_streams_open(tmp_path):
    """SIGTERM while a screen holds a news stream: the stream ends first, the kiosk exits 0 and
    nothing is written into a closed server."""
    port = free_port()
    config = make_config(tmp_path, kiosk_port=port)
    populate(config)
    conf = tmp_path / "kiosk.toml"
    conf.write_text(f'data_dir = "{config.data_dir}"\nhot_folder = "{config.hot_folder}"\nkiosk_port = {port}\n'
                    f'model = "{config.model}"\nkiosk_secret_key = "test"\nkiosk_allow_unauthenticated_loopback = true\n')
    proc = subprocess.Popen([sys.executable, "-m", "hipcad.appliance.kiosk", "--config", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _answers(port), 60, what="the kiosk")
        sock, _ = open_stream(port)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - stopped < 4  # a server waiting for busy threads would take longer
        sock.close()
        err = proc.stderr.read()
        assert "Traceback" not in err and "Exception" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _answers(port: int) -> bool:
    try:
        return status_of(port, "/api/version") == 200
    except OSError:
        return False
