"""``hipcad kiosk``: serve the results screen with waitress (127.0.0.1 unless configured otherwise;
then authentication is required)."""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys

from flask import Flask

from hipcad.appliance.config import Config, ConfigError, load_config
from hipcad.appliance.kiosk import create_app, events
from hipcad.appliance.logs import setup_service_logging

log = logging.getLogger("hipcad.kiosk")


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
        events.shutdown(app)  # open news streams end first: their threads must not write into a closed server
        server.close()


def _exit(app: Flask) -> None:
    # news streams end first, or waitress waits for their threads before it stops
    events.stop(app)
    sys.exit(0)


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
    setup_service_logging(config.log_level)
    signal.signal(signal.SIGTERM, lambda *_: _exit(app))
    serve(app, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
