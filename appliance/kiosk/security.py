"""The kiosk's defences: HTTP Basic authentication (required off loopback), CSRF tokens, security
headers, HTML-safe JSON, and a persistent session secret."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from flask import Flask, Response, abort, request, session
from flask.json.provider import DefaultJSONProvider
from werkzeug.security import check_password_hash

from hipcad.appliance.config import Config, ConfigError

CSP = ("default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")


class SafeJSON(DefaultJSONProvider):
    """JSON with '<', '>' and '&' written as \\u escapes: a hostile DICOM string stays inert even
    where a response is sniffed or pasted into HTML."""

    def dumps(self, obj, **kwargs) -> str:
        text = super().dumps(obj, **kwargs)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def require_safe_bind(config: Config) -> None:
    if config.needs_auth and not config.kiosk_password_hash:
        raise ConfigError(
            f"refusing to listen on {config.kiosk_bind}: any address other than loopback needs authentication; "
            "set kiosk_password_hash (make one with `hipcad kiosk --hash-password`)"
        )


def session_secret(config: Config) -> bytes:
    """The configured secret, else one generated once and kept (0600) in the data folder."""
    if config.kiosk_secret_key:
        return config.kiosk_secret_key.encode()
    path = Path(config.data_dir) / "kiosk.secret"
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
    """Authentication, CSRF checks and security headers on every request of ``app``."""
    verified: set[bytes] = set()  # digests of credentials already checked (scrypt is slow on purpose)
    pepper = secrets.token_bytes(16)

    @app.before_request
    def authenticate():
        if not config.needs_auth:
            return None
        auth = request.authorization
        if auth is not None and auth.type == "basic" and auth.username is not None and auth.password is not None:
            digest = hashlib.sha256(pepper + auth.username.encode() + b"\0" + auth.password.encode()).digest()
            if digest in verified:
                return None
            if hmac.compare_digest(auth.username, config.kiosk_user) and check_password_hash(config.kiosk_password_hash, auth.password):
                verified.add(digest)
                return None
        return Response("authentication required\n", 401, {"WWW-Authenticate": 'Basic realm="hipcad kiosk", charset="UTF-8"'},
                        mimetype="text/plain")

    @app.before_request
    def check_csrf():
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            sent = request.form.get("csrf_token", "")
            expected = session.get("csrf", "")
            if not sent or not expected or not hmac.compare_digest(sent, expected):
                abort(400, description="missing or invalid form token; reload the page and try again")
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"  # pages, images and API all carry patient data
        return response

    app.jinja_env.globals["csrf_token"] = csrf_token


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]
