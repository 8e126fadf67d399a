"""systemd's notify protocol (sd_notify(3)), without a dependency: one datagram per message to the
AF_UNIX socket named in ``NOTIFY_SOCKET`` (a leading '@' means the abstract namespace)."""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET") or ""
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address if address[:1] in ("/", "\0") else ""
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        ours = pid is None or pid == str(os.getpid())
        #: seconds between watchdog pings (half the configured WatchdogSec), or None
        self.watchdog_interval = int(usec) / 2e6 if usec and usec.isdigit() and int(usec) > 0 and ours else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` lines; False (never an exception) where there is no socket."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(fields).encode("utf-8"))
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")
