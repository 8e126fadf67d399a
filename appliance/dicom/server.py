"""The listener's TCP server: who may connect, for how long, and how many at once.

pynetdicom's ``AssociationServer`` applies host checks, association limits and timeouts only after
a complete A-ASSOCIATE-RQ, gives accepted sockets no timeout, and does the TLS handshake inside its
single accept loop (one peer that never sends a ClientHello stops all TLS service). This subclass:

- ``verify_request`` (socketserver, in the accept thread, before any thread is started) closes a
  connection from a host not on ``dicom_allowed_hosts``, and one over the limits: connections in
  total, per host, and per host not yet associated (half-open);
- the accepted socket gets the handshake deadline, then ``network_timeout`` per recv; the TLS
  handshake runs in the connection's own thread, under that deadline;
- ``service_actions`` (twice a second) reaps connections not associated within ``handshake_s`` and
  associations older than ``max_association_s``, deletes the spool files of dead associations, and
  logs the refusal counts held back.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import evt
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from hipcad.appliance.dicom.guard import COUNTERS, SpoolFile, flush_suppressed, refusal
from hipcad.appliance.dicom.scp import normalise_host
from hipcad.appliance.logs import printable

log = logging.getLogger("hipcad.dicom")


@dataclass(frozen=True)
class Limits:
    max_pdu: int = 256 * 1024  # advertised Maximum Length Receive, enforced on every P-DATA-TF
    max_object_bytes: int = 256 << 20  # one C-STORE data set, file meta included
    drain_bytes: int = 256 << 20  # read and dropped past the cap to answer 0xA700; beyond it, A-ABORT
    max_associations: int = 4  # established at once
    max_connections: int = 8  # TCP connections at once, negotiating ones included
    max_connections_per_host: int = 4
    max_pending_per_host: int = 2  # connected but not (yet) associated, per source address
    handshake_s: float = 10.0  # TCP accept -> TLS -> A-ASSOCIATE-AC/RJ, in total
    network_timeout: float = 30.0  # each recv on an association
    acse_timeout: float = 10.0
    dimse_timeout: float = 60.0
    max_association_s: float = 1800.0

    @property
    def max_threads(self) -> int:
        """Connection threads at once, closed ones still winding down included: the hard bound."""
        return 4 * self.max_connections

    @classmethod
    def from_config(cls, config) -> "Limits":
        return cls(max_pdu=config.dicom_max_pdu, max_object_bytes=config.dicom_max_object_mb << 20,
                   drain_bytes=config.dicom_max_object_mb << 20, max_associations=config.dicom_max_associations,
                   max_connections=config.dicom_max_connections,
                   max_connections_per_host=config.dicom_max_associations + config.dicom_max_pending_per_host,
                   max_pending_per_host=config.dicom_max_pending_per_host, handshake_s=config.dicom_handshake_s)


@dataclass(eq=False)
class Conn:
    sock: socket.socket
    host: str
    started: float
    assoc: object | None = None
    done: bool = False
    reaped: bool = False
    running: bool = False  # assoc.start() returned (before that, is_alive() is False)
    was_established: bool = False
    spools: list = field(default_factory=list)

    @property
    def established(self) -> bool:
        """Associated at some point (an association being released or aborted is not half-open)."""
        if not self.was_established and self.assoc is not None and getattr(self.assoc, "is_established", False):
            self.was_established = True
        return self.was_established

    @property
    def alive(self) -> bool:
        """Holds a slot: its socket is open (and its association not over)."""
        if self.done:
            return False
        return self.assoc is None or not self.running or self.assoc.is_alive()

    @property
    def thread_alive(self) -> bool:
        """Its thread still runs (pynetdicom may take up to acse_timeout to end a broken one)."""
        if self.assoc is None or not self.running:
            return not self.done
        return self.assoc.is_alive()


def close_socket(sock) -> None:
    for call in (lambda: socket.socket.shutdown(sock, socket.SHUT_RDWR), sock.close):
        try:
            call()
        except OSError:
            pass


class Handler(RequestHandler):
    """One connection, in its own thread: TLS handshake (if any), then pynetdicom's association."""

    def handle(self) -> None:
        server: Server = self.server
        conn = server.conn_for_socket(self.request)
        try:
            if server.tls_context is not None:
                try:  # the socket still has the handshake deadline from get_request
                    tls = server.tls_context.wrap_socket(self.request, server_side=True)
                except (ssl.SSLError, OSError) as err:
                    why = str(getattr(err, "reason", None) or type(err).__name__)
                    refusal("tls", conn.host, f"TLS handshake failed ({type(err).__name__}: {printable(why, 80)})", key=why)
                    server.listener.count_rejection(conn.host, "", f"TLS handshake failed: {why}")
                    conn.done = True
                    close_socket(self.request)
                    return
                conn.sock = self.request = tls
                subject = dict(x[0] for x in (tls.getpeercert() or {}).get("subject", ()))
                log.info("DICOM TLS from %s: %s, client certificate CN=%s", conn.host, tls.version(),
                         printable(subject.get("commonName", "-"), 64))
            self.request.settimeout(server.limits.network_timeout)
            assoc = self._create_association()
            conn.assoc = assoc
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            conn.running = True
        except Exception:
            conn.done = True
            raise


class Server(ThreadedAssociationServer):
    is_hipcad_server = True  # the guards (guard.py) apply to associations of this server
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64  # listen() backlog (socketserver's default is 5)

    def __init__(self, ae, address, ae_title, contexts, ssl_context=None, evt_handlers=None, *,
                 listener, limits: Limits, tls_context: ssl.SSLContext | None = None):
        self.listener = listener
        self.limits = limits
        self.tls_context = tls_context
        self._conns: list[Conn] = []
        self._lock = threading.Lock()
        self.peak_connections = 0
        super().__init__(ae, address, ae_title, contexts, None, evt_handlers=evt_handlers, request_handler=Handler)

    # -- accept (the serving thread) --------------------------------------------------------------
    def get_request(self):
        client, address = self.socket.accept()
        client.settimeout(self.limits.handshake_s)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return client, address

    def verify_request(self, request, client_address) -> bool:
        host = normalise_host(client_address[0])
        self._reap()
        reason = kind = None
        if not self.listener.host_allowed(host):
            reason, kind = "host not on dicom_allowed_hosts: connection closed at accept", "host"
        else:
            lim = self.limits
            with self._lock:
                live = [c for c in self._conns if c.alive]
                mine = [c for c in live if c.host == host]
                pending = [c for c in mine if not c.established]
                threads = sum(1 for c in self._conns if c.thread_alive)
                if len(live) >= lim.max_connections:
                    reason, kind = f"{len(live)} connections open (limit {lim.max_connections})", "busy"
                elif threads >= lim.max_threads:
                    reason, kind = f"{threads} connection threads still winding down (limit {lim.max_threads})", "busy"
                elif len(mine) >= lim.max_connections_per_host:
                    reason, kind = f"{len(mine)} connections from this host (limit {lim.max_connections_per_host})", "busy"
                elif len(pending) >= lim.max_pending_per_host:
                    reason = f"{len(pending)} connections from this host not yet associated (limit {lim.max_pending_per_host})"
                    kind = "half-open"
                else:
                    self._conns.append(Conn(request, host, time.monotonic()))
                    self.peak_connections = max(self.peak_connections, len(live) + 1)
        if reason:
            self.listener.count_rejection(host, "", reason)
            refusal(kind, host, reason)
            return False  # socketserver closes it: no thread, no A-ASSOCIATE-RJ
        return True

    def shutdown_request(self, request) -> None:
        conn = self.conn_for_socket(request, create=False)
        if conn is not None:
            conn.done = True
        super().shutdown_request(request)

    # -- bookkeeping -------------------------------------------------------------------------------
    def conn_for_socket(self, sock, create: bool = True) -> Conn | None:
        with self._lock:
            for c in self._conns:
                if c.sock is sock:
                    return c
        if not create:
            return None
        try:
            host = normalise_host(sock.getpeername()[0])
        except OSError:
            host = "?"
        return Conn(sock, host, time.monotonic())

    def conn_for(self, assoc) -> Conn | None:
        with self._lock:
            return next((c for c in self._conns if c.assoc is assoc), None)

    def connection_closed(self, assoc) -> None:
        """EVT_CONN_CLOSE: the socket is gone, the slot is free (its thread may still be winding down)."""
        conn = self.conn_for(assoc)
        if conn is not None:
            conn.done = True

    def established_count(self, exclude=None) -> int:
        with self._lock:
            return sum(1 for c in self._conns if c.alive and c.established and c.assoc is not exclude)

    def spool_for(self, assoc) -> SpoolFile:
        """The file a C-STORE data set of ``assoc`` is streamed into (guard._spool_file)."""
        conn = self.conn_for(assoc)
        listener, lim = self.listener, self.limits
        incoming = Path(listener.data.incoming)
        host = conn.host if conn else "?"
        why = listener.refuse_store_reason(lim.max_object_bytes)
        if why is None:
            try:
                return SpoolFile(incoming, conn, lim.max_object_bytes, lim.drain_bytes)
            except OSError as err:
                why = f"cannot create the spool file: {err.strerror or err}"
        refusal("disk", host, f"{why}: C-STORE will be answered Out of Resources (0xA700)")
        return SpoolFile(incoming, conn, lim.max_object_bytes, lim.drain_bytes, refused=why)

    def service_actions(self) -> None:
        super().service_actions()
        self._reap()
        flush_suppressed()

    def _reap(self) -> None:
        now = time.monotonic()
        dead, late = [], []
        lim = self.limits
        with self._lock:
            for c in self._conns:
                if not c.alive and not c.thread_alive:
                    dead.append(c)
                elif not c.alive:
                    continue
                elif not c.reaped and not c.established and now - c.started > lim.handshake_s:
                    late.append((c, f"not associated within {lim.handshake_s:.0f} s"))
                elif not c.reaped and c.established and now - c.started > lim.max_association_s:
                    late.append((c, f"association older than {lim.max_association_s:.0f} s"))
            self._conns = [c for c in self._conns if c not in dead]
        for c in dead:
            for spool in c.spools:
                spool.cleanup()
        for c, why in late:
            c.reaped = True
            refusal("timeout", c.host, f"{why}: connection closed")
            try:
                socket.socket.shutdown(c.sock, socket.SHUT_RDWR)  # wakes a recv blocked in any thread
            except OSError:
                pass
            if c.assoc is None:  # never got past the handler (TLS, or not started yet)
                c.done = True

    def stats(self) -> dict:
        with self._lock:
            live = [c for c in self._conns if c.alive]
            return {"connections": len(live), "associations": sum(1 for c in live if c.established),
                    "peak_connections": self.peak_connections, "refusals": dict(COUNTERS)}
