"""The durable queue and result store: one SQLite file (WAL, ``synchronous=FULL``).

One row per distinct input (unique by content sha256 and, for DICOM, by SOP Instance UID), from
``queued`` through ``processing`` to ``done`` or ``failed``. The worker and the kiosk each open
their own connection (one per thread); the kiosk writes only reader answers.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: names result files
    sha256      TEXT NOT NULL UNIQUE,
    sop_uid     TEXT UNIQUE,                         -- DICOM SOP Instance UID, NULL for JPEG/PNG
    name        TEXT NOT NULL,                       -- the name it arrived with: display only
    size        INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('queued', 'processing', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL,
    finished_at REAL,
    total_ms    REAL,
    error       TEXT,
    result_json TEXT,                                -- Result.to_json() + ids; no patient identity
    patient_json TEXT,                               -- display only, never logged
    truth_json  TEXT                                 -- {"right": 0|1, "left": 0|1} where known
);
CREATE INDEX IF NOT EXISTS items_status ON items (status, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reader_answers (
    reader    TEXT NOT NULL,
    item_id   INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    side      TEXT NOT NULL CHECK (side IN ('right', 'left')),
    before    INTEGER, after INTEGER, before_at REAL, after_at REAL,
    PRIMARY KEY (reader, item_id, side));
"""
FINISHED = ("done", "failed")


class Duplicate(Exception):
    """This content or SOP Instance UID is already in the store."""


class Store:
    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        if self.db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            self.db.executescript(SCHEMA)  # idempotent: every statement is IF NOT EXISTS
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def tx(self):
        return _Tx(self.db)

    # -- the queue (worker) -----------------------------------------------------------------
    def find(self, sha: str | None = None, sop_uid: str | None = None) -> sqlite3.Row | None:
        if sha:
            row = self.db.execute("SELECT * FROM items WHERE sha256 = ?", (sha,)).fetchone()
            if row is not None or not sop_uid:
                return row
        return self.db.execute("SELECT * FROM items WHERE sop_uid = ?", (sop_uid,)).fetchone()

    def enqueue(self, sha: str, sop_uid: str | None, name: str, size: int) -> int:
        try:
            with self.tx():
                cur = self.db.execute(
                    "INSERT INTO items (sha256, sop_uid, name, size, status, received_at) VALUES (?, ?, ?, ?, 'queued', ?)",
                    (sha, sop_uid, name, size, time.time()),
                )
        except sqlite3.IntegrityError as err:
            raise Duplicate(str(err)) from None
        return int(cur.lastrowid)

    def release_sop_uid(self, item_id: int) -> None:
        with self.tx():
            self.db.execute("UPDATE items SET sop_uid = NULL WHERE id = ?", (item_id,))

    def recover(self) -> int:
        """After a crash: items left ``processing`` go back to the queue."""
        with self.tx():
            return self.db.execute("UPDATE items SET status = 'queued' WHERE status = 'processing'").rowcount

    def claim_next(self) -> sqlite3.Row | None:
        """The oldest queued item, marked ``processing`` with one more attempt (durably, before it
        is read, so a file that kills the worker is recognised when it comes round again)."""
        with self.tx():
            row = self.db.execute("SELECT id FROM items WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            self.db.execute("UPDATE items SET status = 'processing', attempts = attempts + 1 WHERE id = ?", (row[0],))
        return self.get(row[0])

    def requeue(self, item_id: int) -> None:
        """Put an item back without counting the attempt (the backend failed, not the file)."""
        with self.tx():
            self.db.execute("UPDATE items SET status = 'queued', attempts = MAX(attempts - 1, 0) WHERE id = ?", (item_id,))

    def finish(self, item_id: int, status: str, *, error: str | None = None, result: dict | None = None,
               patient: dict | None = None, total_ms: float | None = None, truth: dict | None = None) -> None:
        assert status in FINISHED
        with self.tx():
            self.db.execute(
                "UPDATE items SET status = ?, error = ?, result_json = ?, patient_json = ?, total_ms = ?, finished_at = ?, "
                "truth_json = ? WHERE id = ?",
                (status, error, json.dumps(result) if result is not None else None,
                 json.dumps(patient) if patient else None, total_ms, time.time(),
                 json.dumps(truth) if truth else None, item_id),
            )
            self._bump(status)

    def count(self, name: str, by: int = 1) -> None:
        with self.tx():
            self._bump(name, by)

    def _bump(self, name: str, by: int = 1) -> None:
        self.db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )

    def counters(self) -> dict[str, int]:
        return {r["name"]: r["value"] for r in self.db.execute("SELECT name, value FROM counters")}

    def status_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("queued", "processing", "done", "failed"), 0)
        counts.update({r[0]: r[1] for r in self.db.execute("SELECT status, COUNT(*) FROM items GROUP BY status")})
        return counts

    def older_than(self, cutoff: float) -> list[sqlite3.Row]:
        return self.db.execute("SELECT id, sha256, status FROM items WHERE received_at < ? AND status IN ('done', 'failed')",
                               (cutoff,)).fetchall()

    def delete(self, item_id: int) -> None:
        with self.tx():
            self.db.execute("DELETE FROM items WHERE id = ?", (item_id,))

    # -- state shared with the kiosk: heartbeat, backend, events ----------------------------------
    def put_state(self, key: str, value: dict) -> None:
        with self.tx():
            self.db.execute(
                "INSERT INTO state (key, value, at) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, at = excluded.at",
                (key, json.dumps(value), time.time()),
            )

    def get_state(self, key: str) -> tuple[dict, float] | None:
        row = self.db.execute("SELECT value, at FROM state WHERE key = ?", (key,)).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def add_event(self, kind: str, message: str) -> None:
        with self.tx():
            self.db.execute("INSERT INTO events (at, kind, message) VALUES (?, ?, ?)", (time.time(), kind, message))

    def events(self, kind: str, limit: int = 20) -> list[dict]:
        rows = self.db.execute("SELECT at, message FROM events WHERE kind = ? ORDER BY id DESC LIMIT ?", (kind, limit))
        return [{"at": r[0], "message": r[1]} for r in rows]

    # -- results (kiosk) ----------------------------------------------------------------------------
    def get(self, item_id: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()

    def finished(self, limit: int = 50, before_id: int | None = None) -> list[sqlite3.Row]:
        """Finished items, newest first."""
        return self.db.execute(
            "SELECT * FROM items WHERE status IN ('done', 'failed') AND id < ? ORDER BY id DESC LIMIT ?",
            (before_id if before_id is not None else 2**62, limit),
        ).fetchall()

    def latencies_ms(self, limit: int = 10000) -> list[float]:
        rows = self.db.execute("SELECT total_ms FROM items WHERE status = 'done' AND total_ms IS NOT NULL ORDER BY id DESC LIMIT ?",
                               (limit,))
        return [r[0] for r in rows]

    def version(self) -> str:
        """Changes whenever an item is finished or added (for the kiosk's live update)."""
        row = self.db.execute("SELECT COALESCE(MAX(id), 0), COUNT(*), COALESCE(MAX(finished_at), 0) FROM items").fetchone()
        return f"{row[0]}-{row[1]}-{row[2]:.3f}"

    # -- reader study (read-first mode) ---------------------------------------------------------
    def answers(self, reader: str, item_id: int) -> dict[str, sqlite3.Row]:
        rows = self.db.execute("SELECT * FROM reader_answers WHERE reader = ? AND item_id = ?", (reader, item_id))
        return {r["side"]: r for r in rows}

    def record_answer(self, reader: str, item_id: int, phase: str, verdicts: dict[str, int]) -> None:
        assert phase in ("before", "after")
        now = time.time()
        with self.tx():
            for side, value in verdicts.items():
                self.db.execute(
                    "INSERT INTO reader_answers (reader, item_id, side) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (reader, item_id, side),
                )
                # an answer, once given, is final: the before answer must not change after the CAD was shown
                self.db.execute(
                    f"UPDATE reader_answers SET {phase} = ?, {phase}_at = ? "
                    f"WHERE reader = ? AND item_id = ? AND side = ? AND {phase} IS NULL",
                    (int(value), now, reader, item_id, side),
                )

    def all_answers(self) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT a.*, i.name AS file, i.truth_json FROM reader_answers a JOIN items i ON i.id = a.item_id "
            "ORDER BY a.reader, a.item_id, CASE a.side WHEN 'right' THEN 0 ELSE 1 END"
        ).fetchall()


class _Tx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
