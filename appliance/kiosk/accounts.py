"""Who may use the kiosk: named reader accounts, login throttling and lockout, server-side sessions.

- Accounts: ``kiosk_users_file`` (one ``name:werkzeug-hash`` per line; ``hipcad kiosk --add-user``
  writes it) plus the single ``kiosk_user`` / ``kiosk_password_hash`` of older configs. A check
  compares the name in constant time against every account (as bytes: any name is a clean 401)
  and always computes one password hash, a dummy one for an unknown name, so the time a refusal
  takes does not tell whether the name exists.
- Throttle: failures are counted per user name and per client address in a sliding window; past
  ``FAIL_LIMIT`` in ``FAIL_WINDOW_S`` both are locked for ``LOCKOUT_S`` (even the right password is
  then refused). The tables are bounded, so a spray of names cannot fill memory.
- Sessions: a random id in the signed cookie, the user and times kept here (a restart signs
  everybody out); idle and absolute time-outs; background polling does not count as activity.
"""

from __future__ import annotations

import hmac
import re
import secrets
import threading
import time
from collections import deque
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

from hipcad.appliance.config import Config, ConfigError

FAIL_WINDOW_S = 60.0
FAIL_LIMIT = 20  # failures answered 401 in the window; the next one locks
LOCKOUT_S = 900.0
ABSOLUTE_SESSION_S = 12 * 3600.0
MAX_KEYS = 10000
_NAME_RE = re.compile(r"^[^\s:][^:\n\r]{0,63}$")


def read_users_file(path: str | Path) -> dict[str, str]:
    """``name:hash`` lines (blank lines and ``#`` comments ignored) -> {name: hash}."""
    users: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeError) as err:
        raise ConfigError(f"kiosk_users_file {path}: cannot read it ({err})") from err
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, pw_hash = line.partition(":")
        if not sep or not _NAME_RE.match(name) or not pw_hash.strip():
            raise ConfigError(f"kiosk_users_file {path}, line {number}: expected NAME:HASH "
                              "(make one with `hipcad kiosk --add-user NAME`)")
        users[name] = pw_hash.strip()
    return users


def add_user(path: str | Path, name: str, password: str) -> None:
    """Add or replace ``name`` in the users file (written atomically, mode 0640)."""
    from hipcad.runtime.durable import atomic_write

    if not _NAME_RE.match(name):
        raise ConfigError(f"{name!r} is not a usable reader name (1 to 64 characters, no colon, not starting with a space)")
    users = read_users_file(path) if Path(path).exists() else {}
    users[name] = generate_password_hash(password)
    text = "".join(f"{n}:{h}\n" for n, h in users.items())
    atomic_write(Path(path), text.encode("utf-8"), mode=0o640)


def configured_users(config: Config) -> dict[str, str]:
    users = read_users_file(config.kiosk_users_file) if config.kiosk_users_file else {}
    if config.kiosk_password_hash:
        users.setdefault(config.kiosk_user, config.kiosk_password_hash)
    return users


class Accounts:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = [(name.encode("utf-8"), pw_hash) for name, pw_hash in users.items()]
        self.dummy = generate_password_hash(secrets.token_urlsafe(16))  # same method and cost as real ones

    def __bool__(self) -> bool:
        return bool(self.users)

    def check(self, name: str, password: str) -> str | None:
        """The account's name when ``password`` is right, else None (same work either way)."""
        given = name.encode("utf-8", "surrogateescape")
        found = None
        for stored, pw_hash in self.users:  # every account, every time
            if hmac.compare_digest(given, stored):
                found = (stored, pw_hash)
        ok = check_password_hash(found[1] if found else self.dummy, password)
        return found[0].decode("utf-8") if found and ok else None


class Throttle:
    """Failures per key in a sliding window; a key past the limit is locked for a while."""

    def __init__(self, window: float = FAIL_WINDOW_S, limit: int = FAIL_LIMIT, lockout: float = LOCKOUT_S) -> None:
        self.window, self.limit, self.lockout = window, limit, lockout
        self.fails: dict[str, deque] = {}
        self.locked: dict[str, float] = {}
        self.lock = threading.Lock()

    def is_locked(self, keys, now: float) -> bool:
        with self.lock:
            return any(self.locked.get(k, 0.0) > now for k in keys)

    def failure(self, keys, now: float) -> list[str]:
        """Record a failure; the keys that became locked by it."""
        newly = []
        with self.lock:
            if len(self.fails) > MAX_KEYS:
                for k in [k for k, q in self.fails.items() if not q or q[-1] < now - self.window]:
                    del self.fails[k]
            if len(self.locked) > MAX_KEYS:
                self.locked = {k: t for k, t in self.locked.items() if t > now}
            for k in keys:
                q = self.fails.setdefault(k, deque())
                while q and q[0] < now - self.window:
                    q.popleft()
                q.append(now)
                if len(q) > self.limit and self.locked.get(k, 0.0) <= now:
                    self.locked[k] = now + self.lockout
                    newly.append(k)
        return newly

    def success(self, keys) -> None:
        with self.lock:
            for k in keys:
                if k.startswith("user:"):
                    self.fails.pop(k, None)


class Sessions:
    def __init__(self, idle_s: float, absolute_s: float = ABSOLUTE_SESSION_S) -> None:
        self.idle_s, self.absolute_s = idle_s, absolute_s
        self.table: dict[str, dict] = {}
        self.lock = threading.Lock()

    def open(self, user: str) -> str:
        sid = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self.lock:
            if len(self.table) > MAX_KEYS:
                self.table = {k: v for k, v in self.table.items() if now - v["seen"] <= self.idle_s}
            self.table[sid] = {"user": user, "created": now, "seen": now}
        return sid

    def user(self, sid: str | None, activity: bool = True) -> str | None:
        if not sid:
            return None
        now = time.monotonic()
        with self.lock:
            entry = self.table.get(sid)
            if entry is None or now - entry["seen"] > self.idle_s or now - entry["created"] > self.absolute_s:
                self.table.pop(sid, None)
                return None
            if activity:
                entry["seen"] = now
            return entry["user"]

    def close(self, sid: str | None) -> None:
        with self.lock:
            self.table.pop(sid, None)
