"""``hipcad kiosk``: serve the results screen with cheroot: HTTPS when ``kiosk_tls_cert`` is set
(required off loopback), plain HTTP on loopback. ``--add-user`` manages the reader accounts."""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import ssl
import sys

from flask import Flask

from hipcad.appliance.config import Config, ConfigError, load_config
from hipcad.appliance.kiosk import create_app, events
from hipcad.appliance.logs import setup_service_logging

log = logging.getLogger("hipcad.kiosk")


def make_server(app: Flask, config: Config, host: str | None = None, port: int | None = None):
    """cheroot's WSGI server (threads as configured, bounded queue, request and header size limits,
    timeouts); with TLS, TLS 1.2 or later through cheroot's built-in adapter."""
    from cheroot import wsgi

    server = wsgi.Server((host or config.kiosk_bind, config.kiosk_port if port is None else port), app,
                         numthreads=config.kiosk_threads, max=config.kiosk_threads, server_name="hipcad", timeout=10,
                         accepted_queue_timeout=5, request_queue_size=64)
    server.max_request_body_size = 64 * 1024
    server.max_request_header_size = 16 * 1024
    if config.kiosk_tls:
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        try:
            adapter = BuiltinSSLAdapter(config.kiosk_tls_cert, config.kiosk_tls_key)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"kiosk_tls_cert/kiosk_tls_key: {err}") from err
        adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
        server.ssl_adapter = adapter
    return server


def url_of(config: Config, server) -> str:
    host, port = server.bind_addr[:2]
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if config.kiosk_tls else 'http'}://{host}:{port}/"


def serve(app: Flask, config: Config) -> None:
    server = make_server(app, config)
    server.prepare()
    url = url_of(config, server)
    log.info("kiosk listening on %s", url)
    print(f"kiosk: {url}", flush=True)
    try:
        server.serve()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        events.shutdown(app)  # open news streams end first: their threads must not write into a stopped server
        server.stop()


def _read_password(prompt: str) -> str:
    return getpass.getpass(prompt) if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")


def _exit(app: Flask) -> None:
    # news streams end first, or cheroot waits for their threads before it stops
    events.stop(app)
    sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hipcad kiosk",
        description="Serve the results screen (newest study first, history, read-first mode, JSON API, /metrics) for "
        "signed-in readers. Listens on 127.0.0.1 unless kiosk_bind says otherwise; any other address requires reader "
        "accounts and TLS (kiosk_tls_cert, kiosk_tls_key).",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration (see systemd/hipcad.toml.example)")
    parser.add_argument("--add-user", metavar="NAME", help="add (or change the password of) reader NAME in "
                        "kiosk_users_file; the password is read from the terminal, or stdin when not a terminal")
    parser.add_argument("--hash-password", action="store_true",
                        help="read a password (prompt, or stdin when not a terminal) and print the hash for kiosk_password_hash")
    args = parser.parse_args(argv)
    if args.hash_password or args.add_user:
        password = _read_password("password: ")
        if len(password) < 8:
            print("hipcad kiosk: use a password of at least 8 characters", file=sys.stderr)
            return 2
        if args.hash_password:
            from werkzeug.security import generate_password_hash

            print(generate_password_hash(password))
            return 0
        try:
            config = load_config(args.config)
            if not config.kiosk_users_file:
                raise ConfigError("set kiosk_users_file in the config first (e.g. /etc/hipcad/kiosk-users)")
            from hipcad.appliance.kiosk.accounts import add_user

            add_user(config.kiosk_users_file, args.add_user, password)
        except ConfigError as err:
            print(f"hipcad kiosk: {err}", file=sys.stderr)
            return 2
        print(f"reader {args.add_user!r} saved in {config.kiosk_users_file}; restart the kiosk to use it")
        return 0
    try:
        config = load_config(args.config)
        app = create_app(config)
        setup_service_logging(config.log_level)
        signal.signal(signal.SIGTERM, lambda *_: _exit(app))
        serve(app, config)
    except ConfigError as err:
        print(f"hipcad kiosk: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
