"""The kiosk's defences, on every request, in this order: the Host header (DNS rebinding), request
arguments (bad numbers are a 400, never a 500), the signed-in reader (session or HTTP Basic, with
throttling and lockout, :mod:`.accounts`), CSRF tokens on forms; then security headers (HSTS under
TLS), HTML-safe JSON, and the file name (patient data) removed from ``/api/results`` when nobody is
signed in. Who looked at which study goes to the ``hipcad.kiosk.access`` log.

No login is needed only with ``kiosk_allow_unauthenticated_loopback`` on a loopback bind (the
demo); any other address needs reader accounts and TLS, or the kiosk refuses to start.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path

from flask import Flask, Response, abort, g, jsonify, redirect, request, session, url_for
from flask.json.provider import DefaultJSONProvider
from werkzeug.routing import IntegerConverter

from hipcad.appliance.config import LOOPBACK, Config, ConfigError
from hipcad.appliance.kiosk import accounts as acc
from hipcad.appliance.logs import printable

log = logging.getLogger("hipcad.kiosk")
access_log = logging.getLogger("hipcad.kiosk.access")

CSP = ("default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")
SQLITE_INT_MAX = 2**63 - 1
OPEN_PATHS = ("/login", "/static/")
POLL_PATHS = ("/api/version", "/api/health", "/api/events")  # background polling and news are not activity
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class SafeJSON(DefaultJSONProvider):
    """JSON with '<', '>' and '&' written as \\u escapes: a hostile DICOM string stays inert even
    where a response is sniffed or pasted into HTML."""

    def dumps(self, obj, **kwargs) -> str:
        text = super().dumps(obj, **kwargs)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class BoundedInt(IntegerConverter):
    """``<int:...>`` that never hands SQLite a number it cannot store (a 404 instead of a 500)."""

    def __init__(self, map, *args, **kwargs) -> None:
        kwargs.setdefault("max", SQLITE_INT_MAX)
        super().__init__(map, *args, **kwargs)


def require_safe_bind(config: Config) -> None:
    users = acc.configured_users(config)
    if config.kiosk_bind not in LOOPBACK:
        if not users or not config.kiosk_tls:
            raise ConfigError(
                f"refusing to listen on {config.kiosk_bind}: any address other than loopback needs authentication "
                "(reader accounts: kiosk_users_file, `hipcad kiosk --add-user NAME`) and TLS (kiosk_tls_cert, "
                "kiosk_tls_key), so that passwords and patient data never cross the network in clear")
    elif not users and not config.kiosk_allow_unauthenticated_loopback:
        raise ConfigError("no reader accounts configured (kiosk_users_file, `hipcad kiosk --add-user NAME`): set "
                          "kiosk_allow_unauthenticated_loopback = true for a loopback-only screen without login")


def trusted_hosts(config: Config) -> set[str]:
    names = {*LOOPBACK_NAMES, *(h.strip().lower().strip("[]") for h in config.kiosk_trusted_hosts)}
    if config.kiosk_bind not in ("0.0.0.0", "::", ""):
        names.add(config.kiosk_bind.lower().strip("[]"))
    return names


def host_name(header: str) -> str:
    """The name in a Host header, without the port ('[::1]:8080' -> '::1')."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def session_secret(config: Config) -> bytes:
    """The configured secret, else one generated once and kept (0600) beside the store (the one
    folder the kiosk may write)."""
    if config.kiosk_secret_key:
        return config.kiosk_secret_key.encode()
    path = Path(config.db_path).parent / "kiosk.secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    key = secrets.token_hex(32).encode()
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
        fh.flush()
        os.fsync(fh.fileno())
    return key


def init_app(app: Flask, config: Config) -> None:
    """Install the defences on ``app`` (before its blueprints are registered: the bounded ``int``)."""
    accounts = acc.Accounts(acc.configured_users(config))
    throttle = acc.Throttle()
    sessions = acc.Sessions(config.kiosk_idle_timeout_s)
    open_access = not config.needs_auth
    hosts = trusted_hosts(config)
    app.url_map.converters["int"] = BoundedInt
    app.extensions["hipcad.security"] = {"accounts": accounts, "throttle": throttle, "sessions": sessions}
    if config.kiosk_tls:
        app.config.update(SESSION_COOKIE_SECURE=True, SESSION_COOKIE_NAME="__Host-hipcad")

    def client() -> str:
        return printable(request.remote_addr or "?", 46)

    verified: dict[bytes, str] = {}  # peppered digests of credentials already checked (scrypt is slow on purpose)
    pepper = secrets.token_bytes(16)

    def attempt(name: str, password: str, remember: bool = False) -> tuple[str | None, int]:
        """(user, 0), or (None, the status to answer: 401 or 429). ``remember``: HTTP Basic, which
        a client sends with every request: a right pair is checked once (until a restart)."""
        now = time.monotonic()
        shown = printable(name)
        keys = [f"user:{name[:256]}", f"ip:{request.remote_addr}"]
        if throttle.is_locked(keys, now):
            log.warning("login refused (locked out): user %r from %s", shown, client())
            return None, 429
        digest = hashlib.sha256(pepper + name.encode("utf-8", "surrogateescape") + b"\0" +
                                password.encode("utf-8", "surrogateescape")).digest()
        if remember and digest in verified:
            return verified[digest], 0
        user = accounts.check(name, password)
        if user is not None:
            throttle.success(keys)
            log.info("login: user %r from %s", shown, client())
            if remember and len(verified) < acc.MAX_KEYS:
                verified[digest] = user
            return user, 0
        newly = throttle.failure(keys, now)
        log.warning("failed login: user %r from %s", shown, client())
        if newly:
            log.warning("LOCKOUT for %.0f s: %s after more than %d failed logins in %.0f s", throttle.lockout,
                        ", ".join(printable(k, 80) for k in newly), throttle.limit, throttle.window)
            return None, 429
        return None, 401

    app.extensions["hipcad.security"]["attempt"] = attempt

    def refuse(status: int = 401):
        if status == 429:
            return Response("too many failed logins: locked out for a while\n", 429,
                            {"Retry-After": str(int(throttle.lockout))}, mimetype="text/plain")
        if request.path.startswith(("/api/", "/metrics", "/export/", "/results/")) or request.authorization is not None:
            return Response("authentication required\n", 401,
                            {"WWW-Authenticate": 'Basic realm="hipcad kiosk", charset="UTF-8"'}, mimetype="text/plain")
        return redirect(url_for("login.login", next=request.full_path if request.method == "GET" else "/"), 303)

    @app.before_request
    def check_host():  # first: a rebound name gets nothing, not even the login page
        raw = request.environ.get("HTTP_HOST", "")
        if host_name(raw) not in hosts:
            log.warning("request for an unknown Host %r from %s refused (kiosk_trusted_hosts)", printable(raw, 80), client())
            return Response("unknown host name\n", 421, mimetype="text/plain")
        return None

    @app.before_request
    def check_arguments():
        for name in ("before", "limit"):
            value = request.args.get(name)
            if value is not None and not (value.isascii() and value.isdigit() and len(value) <= 18):
                abort(400, description=f"{name} must be a non-negative integer")

    @app.before_request
    def authenticate():
        g.user = None
        if request.path.startswith(OPEN_PATHS):
            return None
        user = sessions.user(session.get("sid"), activity=request.path not in POLL_PATHS)
        auth = request.authorization
        if user is None and auth is not None and auth.type == "basic":
            user, status = attempt(auth.username or "", auth.password or "", remember=True)
            if user is None:
                return refuse(status)
        if user is None and not open_access:
            return refuse()
        g.user = user
        return None

    @app.before_request
    def check_csrf():
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            sent, expected = request.form.get("csrf_token", ""), session.get("csrf", "")
            if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
                abort(400, description="missing or invalid form token; reload the page and try again")
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if config.kiosk_tls:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        if not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"  # pages, images and API all carry patient data
        return response

    @app.errorhandler(OverflowError)  # backstops: a number or a name the store cannot take is the client's error
    @app.errorhandler(UnicodeError)
    def bad_input(err):
        return jsonify({"error": "bad request"}), 400

    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["signed_in_user"] = lambda: g.get("user")


def signed_in() -> str | None:
    return g.get("user")


def accessed(what: str, item_ids) -> None:
    """The access log: who looked at which studies (ids only: no patient data)."""
    ids = ",".join(str(int(i)) for i in item_ids) or "-"
    access_log.info("user %r from %s: %s %s", printable(signed_in() or "(no login)"),
                    printable(request.remote_addr or "?", 46), what, ids)


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]
