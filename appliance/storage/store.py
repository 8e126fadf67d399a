"""The durable queue and result store: one SQLite file (WAL, ``synchronous=FULL``).

One row per distinct input (unique by content sha256 and, for DICOM, by SOP Instance UID), from
``queued`` through ``processing`` to ``done`` or ``failed``. The worker and the kiosk each open
their own connection (one per thread); the kiosk writes only reader answers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from hipcad.runtime.errors import HipcadError

SCHEMA_VERSION = 3  # 2: outbox and deliveries (results to PACS); 3: drift counts
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
-- results to PACS (store-and-forward): one row per DICOM object made from a result; its UIDs are
-- generated once, in the transaction that finishes the item, so a resend carries the same UIDs
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,   -- names the built file: data/outbox/<id>.dcm
    item_id     INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('sc', 'sr')),
    sop_class_uid       TEXT NOT NULL,
    sop_instance_uid    TEXT NOT NULL UNIQUE,
    series_instance_uid TEXT NOT NULL,
    created_at  REAL NOT NULL,
    built_at    REAL,                                -- NULL until the file is durable
    error       TEXT,                                -- it could not be built
    UNIQUE (item_id, kind));
CREATE TABLE IF NOT EXISTS deliveries (
    outbox_id   INTEGER NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    destination TEXT NOT NULL,                       -- "AE@host:port"
    status      TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_attempt_at REAL,
    last_error  TEXT,
    sent_at     REAL,
    PRIMARY KEY (outbox_id, destination));
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (status, destination, next_attempt_at);
-- drift monitoring (appliance/drift.py): what the worker saw, counted per local day and model; no
-- patient data, kept for a year whatever retention_days says
CREATE TABLE IF NOT EXISTS drift_counts (
    day   TEXT NOT NULL,                             -- local calendar day, YYYY-MM-DD
    model TEXT NOT NULL,                             -- bundle name @ first 12 hex of its ONNX sha256
    name  TEXT NOT NULL,                             -- what was counted, e.g. 'studies', 'bin:left:23'
    count INTEGER NOT NULL,
    PRIMARY KEY (day, model, name));
-- and the latest results one by one (a ring of the newest rows): 'right'/'left' with a score bin, 'study'
-- with its outcome code, so a change today is seen today
CREATE TABLE IF NOT EXISTS drift_recent (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    kind  TEXT NOT NULL,
    value INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS drift_recent_kind ON drift_recent (kind, model, id);
"""
FINISHED = ("done", "failed")


class Duplicate(HipcadError):
    """This content or SOP Instance UID is already in the store."""


class Store:
    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        self.db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        if new:  # worker and kiosk (two users, one group) both write it; its -wal/-shm files take this mode
            os.chmod(self.path, 0o660)
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

    def queued(self) -> list[sqlite3.Row]:
        """Items waiting to be read, oldest first."""
        return self.db.execute("SELECT id, sha256 FROM items WHERE status = 'queued' ORDER BY id").fetchall()

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
               patient: dict | None = None, total_ms: float | None = None, truth: dict | None = None,
               outbox: list[dict] | None = None) -> None:
        """Record the outcome; ``outbox`` (see :func:`hipcad.appliance.dicom.results.plan`) queues DICOM
        results in the same transaction, so a finished item is never left without its queued results."""
        assert status in FINISHED
        with self.tx():
            now = time.time()
            for obj in outbox or ():
                cur = self.db.execute(
                    "INSERT INTO outbox (item_id, kind, sop_class_uid, sop_instance_uid, series_instance_uid, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (item_id, obj["kind"], obj["sop_class_uid"], obj["sop_instance_uid"], obj["series_instance_uid"], now))
                self.db.executemany(
                    "INSERT INTO deliveries (outbox_id, destination, status, next_attempt_at) VALUES (?, ?, 'pending', ?)",
                    [(cur.lastrowid, dest, now) for dest in obj["destinations"]])
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

    # -- the outbox (results to PACS) ---------------------------------------------------------------
    def outbox_unbuilt(self, limit: int = 20) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT o.*, i.sha256, i.result_json FROM outbox o JOIN items i ON i.id = o.item_id "
            "WHERE o.built_at IS NULL AND o.error IS NULL ORDER BY o.id LIMIT ?", (limit,)).fetchall()

    def outbox_built(self, outbox_id: int) -> None:
        with self.tx():
            self.db.execute("UPDATE outbox SET built_at = ? WHERE id = ?", (time.time(), outbox_id))

    def outbox_failed(self, outbox_id: int, error: str) -> None:
        """It cannot be built (its input or overlay is gone): nothing to deliver."""
        with self.tx():
            self.db.execute("UPDATE outbox SET error = ? WHERE id = ?", (error, outbox_id))
            self.db.execute("UPDATE deliveries SET status = 'failed', last_error = ? WHERE outbox_id = ? AND status = 'pending'",
                            (error, outbox_id))

    def due_deliveries(self, destination: str, now: float, limit: int = 50) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT d.*, o.sop_class_uid, o.sop_instance_uid, o.kind, o.item_id FROM deliveries d "
            "JOIN outbox o ON o.id = d.outbox_id WHERE d.destination = ? AND d.status = 'pending' "
            "AND o.built_at IS NOT NULL AND d.next_attempt_at <= ? ORDER BY d.outbox_id LIMIT ?",
            (destination, now, limit)).fetchall()

    def delivery_sent(self, outbox_id: int, destination: str) -> None:
        with self.tx():
            now = time.time()
            self.db.execute("UPDATE deliveries SET status = 'sent', sent_at = ?, last_attempt_at = ?, "
                            "attempts = attempts + 1, last_error = NULL WHERE outbox_id = ? AND destination = ?",
                            (now, now, outbox_id, destination))

    def delivery_failed(self, outbox_id: int, destination: str, error: str, next_attempt_at: float) -> None:
        with self.tx():
            self.db.execute("UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = ?, last_error = ?, "
                            "next_attempt_at = ? WHERE outbox_id = ? AND destination = ? AND status = 'pending'",
                            (time.time(), error, next_attempt_at, outbox_id, destination))

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        """destination -> {"pending": n, "sent": n, "failed": n}."""
        out: dict[str, dict[str, int]] = {}
        for row in self.db.execute("SELECT destination, status, COUNT(*) FROM deliveries GROUP BY destination, status"):
            out.setdefault(row[0], {"pending": 0, "sent": 0, "failed": 0})[row[1]] = row[2]
        return out

    def outbox_ids(self, item_id: int) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT id FROM outbox WHERE item_id = ?", (item_id,))]

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

    # -- drift counts (worker adds, kiosk reads) ----------------------------------------------------
    def drift_add(self, day: str, model: str, counts: dict[str, int], recent: list[tuple[str, int]],
                  keep_since: str, keep_recent: int) -> None:
        """Add ``counts`` to the day's totals and ``recent`` (kind, value) rows to the ring; rows
        before the day ``keep_since`` and all but the newest ``keep_recent`` ring rows are dropped."""
        with self.tx():
            self.db.executemany(
                "INSERT INTO drift_counts (day, model, name, count) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (day, model, name) DO UPDATE SET count = count + excluded.count",
                [(day, model, name, int(n)) for name, n in counts.items()])
            cur = None
            for kind, value in recent:
                cur = self.db.execute("INSERT INTO drift_recent (model, kind, value) VALUES (?, ?, ?)", (model, kind, value))
            self.db.execute("DELETE FROM drift_counts WHERE day < ?", (keep_since,))
            if cur is not None:
                self.db.execute("DELETE FROM drift_recent WHERE id <= ?", (cur.lastrowid - keep_recent,))

    def drift_counts(self, since: str) -> list[sqlite3.Row]:
        """``(day, model, name, count)`` rows from the day ``since`` on."""
        return self.db.execute("SELECT day, model, name, count FROM drift_counts WHERE day >= ? ORDER BY day",
                               (since,)).fetchall()

    def drift_recent(self, kind: str, limit: int, model: str | None = None) -> list[int]:
        """The values of the newest ``limit`` ring rows of ``kind`` (of ``model``, if given), newest first."""
        return [r[0] for r in self.db.execute(
            "SELECT value FROM drift_recent WHERE kind = ? AND (? IS NULL OR model = ?) ORDER BY id DESC LIMIT ?",
            (kind, model, model, limit))]

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

    def data_version(self) -> int:
        """SQLite's counter of commits by other connections (any process): a cheap "anything new?"
        asked many times a second by the kiosk's news streams before they compute :meth:`version`."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

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
