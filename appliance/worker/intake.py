"""From the hot folder into the durable queue, and the data folder's housekeeping.

:func:`ingest` hashes a complete file, drops it if its content (sha256) or its DICOM SOP Instance
UID is already known, else moves it into ``data/incoming/<sha256>`` and records it in the queue.
The name it arrived with is written durably beside the spool first, then the file is moved, then
queued; :func:`reconcile` (at every start, before anything is read) queues a spooled file a crash
left unrecorded under that name, so together they are one durable step that keeps the name.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hipcad.appliance.storage.files import SHA256_RE, DataDir, remove_quietly
from hipcad.appliance.storage.store import Duplicate, Store
from hipcad.appliance.worker.writers import StillOpenError, Taking
from hipcad.runtime.durable import atomic_write, move_durable
from hipcad.runtime.imaging.sniff import HEAD_BYTES, sniff

log = logging.getLogger(__name__)

RECOVERED_NAME = "(recovered after a restart)"
# The hot folder (main thread) and the DICOM listener (one thread per association) both admit
# files: the duplicate check, the move into the spool and the INSERT are one step for all of them.
_ADMIT = threading.Lock()


def display_name(path: Path, root: Path) -> str:
    """The name a file arrived with, for display only (escaped wherever it is shown)."""
    try:
        name = str(path.relative_to(root))
    except ValueError:
        name = path.name
    name = re.sub(r"[\x00-\x1f\x7f]", "?", name)
    return name[-200:]


SOP_INSTANCE_UID = 0x00080018
_PEEK_BYTES = 64 * 1024


def peek_sop_uid(path: Path) -> str | None:
    """A DICOM file's SOP Instance UID from the start of its dataset; None for anything else.

    Bounded work (it runs in the worker's main thread): at most the first 64 KiB of the dataset are
    read -- inflated, for a Deflated file (inflating all of a 1 MB zip bomb took seconds and 2 GB)."""
    from pydicom.filereader import read_dataset

    from hipcad.runtime.imaging.deflate import DEFLATED, dataset_start, inflate_prefix
    from hipcad.runtime.imaging.quiet import quiet_decoding

    try:
        with open(path, "rb") as fh:
            if sniff(fh.read(HEAD_BYTES)) != "dicom":
                return None
            ts, start = dataset_start(fh)
            if ts is None:
                return None
            fh.seek(start)
            prefix = inflate_prefix(fh, _PEEK_BYTES) if ts == DEFLATED else fh.read(_PEEK_BYTES)
        with quiet_decoding():  # pydicom's warnings quote values read from the file
            ds = read_dataset(io.BytesIO(prefix), ts == "1.2.840.10008.1.2", ts != "1.2.840.10008.1.2.2",
                              stop_when=lambda tag, vr, length: tag > SOP_INSTANCE_UID)
            uid = str(ds.get("SOPInstanceUID", "") or "").strip().strip("\0")
        return uid[:128] or None
    except Exception:  # noqa: BLE001 - an unreadable header is the decoder's business, later
        return None


def ingest(path: Path, root: Path, store: Store, data: DataDir) -> int | None:
    """Take one complete file from the hot folder. Returns the new item id, or None when the file
    was a duplicate (then it is deleted) or vanished. Raises :class:`StillOpenError` when a process
    has it open for writing or changes it meanwhile: it stays in the hot folder.

    The file is hashed from one descriptor, under a read lease where the kernel grants one (no
    writer can open it until it is in the spool; one that tries gets it back under its name), and
    its size and mtime are checked again after the move."""
    try:
        taking = Taking(path)
    except FileNotFoundError:
        return None
    with taking:
        sha, size = taking.hash()
        return admit(path, sha, size, peek_sop_uid(path), display_name(path, root), store, data,
                     still_complete=taking.unchanged)


def admit(path: Path, sha: str, size: int, sop_uid: str | None, name: str, store: Store, data: DataDir,
          still_complete: Callable[[], bool] | None = None) -> int | None:
    """Move a complete file (already hashed) into the spool and queue it, unless its content or SOP
    Instance UID is known (then it is deleted). Returns the new item id, or None for a duplicate.
    ``still_complete`` is asked after the move: False moves the file back (StillOpenError)."""
    with _ADMIT:
        existing = store.find(sha, sop_uid)
        if existing is not None and existing["sha256"] != sha and existing["status"] == "failed":
            # the same image again in other bytes after a failed read (e.g. a transfer cut short): read it
            store.release_sop_uid(existing["id"])
            existing = None
        if existing is not None:
            _drop_duplicate(path, existing, store, sha)
            return None
        spool, received = data.spool(sha), data.received_name(sha)
        atomic_write(received, name.encode("utf-8", "surrogateescape"))
        move_durable(path, spool)
        if still_complete is not None and not still_complete():
            move_durable(spool, path)  # a writer came for it: its bytes must land under its own name
            remove_quietly(received)
            raise StillOpenError("a process opened the file for writing while it was taken")
        try:
            item_id = store.enqueue(sha, sop_uid, name, size)
        except Duplicate:  # cannot happen under the lock unless another process shares the data folder
            existing = store.find(sha, sop_uid)
            remove_quietly(spool, received)
            _drop_duplicate(None, existing, store, sha)
            return None
        remove_quietly(received)
    log.info("queued item %d (sha256 %s, %d bytes)", item_id, sha[:12], size)
    return item_id


def _drop_duplicate(path: Path | None, existing, store: Store, sha: str) -> None:
    log.info("sha256 %s is a duplicate of item %s; not read again", sha[:12], existing["id"] if existing else "?")
    if path is not None:
        remove_quietly(path)
    store.count("duplicates")


def reconcile(store: Store, data: DataDir) -> None:
    """Bring the data folder and the store into agreement after an unclean stop."""
    removed = data.remove_temporaries()
    if removed:
        log.info("removed %d half-written temporary file(s)", removed)
    requeued = store.recover()
    if requeued:
        log.warning("%d item(s) were being read when the worker stopped; queued again", requeued)
    for spool in sorted(data.incoming.iterdir()):
        if not SHA256_RE.match(spool.name):
            continue
        row = store.find(spool.name)
        if row is None:
            received = data.received_name(spool.name)
            name = received.read_bytes().decode("utf-8", "surrogateescape") if received.is_file() else RECOVERED_NAME
            try:
                item_id = store.enqueue(spool.name, peek_sop_uid(spool), name, spool.stat().st_size)
                log.warning("spooled input sha256 %s was not queued; queued as item %d", spool.name[:12], item_id)
            except Duplicate:
                remove_quietly(spool)
        elif row["status"] == "done":
            move_durable(spool, data.processed / spool.name)
        elif row["status"] == "failed":
            move_durable(spool, data.quarantine / spool.name)
    # names of files now queued, or of files a crash left in the hot folder (they come in again)
    for received in data.incoming.glob("*.name"):
        remove_quietly(received)
    for row in store.queued():
        sha = row["sha256"]
        if data.spool(sha).exists():
            continue
        # the reader moves an input out of the spool just before it finishes the row: a stop in
        # between leaves the row queued (recovered above) and the input already moved; read it again
        moved = next((p for p in (data.processed / sha, data.quarantine / sha) if p.exists()), None)
        if moved is not None:
            move_durable(moved, data.spool(sha))
            continue
        log.error("item %d: its spooled input is missing; marked failed", row["id"])
        store.finish(row["id"], "failed", error="the spooled input file is missing (deleted outside hipcad?)")


def write_reason(data: DataDir, sha: str, name: str, reason: str) -> None:
    text = f"{reason}\n\nreceived as: {name}\nsha256: {sha}\nat: {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n"
    atomic_write(data.quarantine / f"{sha}.reason.txt", text.encode("utf-8", "replace"))


def enforce_retention(store: Store, data: DataDir, days: float) -> int:
    """Delete inputs, results and rows older than ``days`` (they hold patient data)."""
    if days <= 0:
        return 0
    rows = store.older_than(time.time() - days * 86400.0)
    for row in rows:
        sha = row["sha256"]
        remove_quietly(*data.result_files(row["id"]), data.processed / sha, data.quarantine / sha,
                       data.quarantine / f"{sha}.reason.txt",
                       *(data.outbox_file(outbox_id) for outbox_id in store.outbox_ids(row["id"])))
        store.delete(row["id"])
    if rows:
        log.info("retention: deleted %d item(s) older than %g days", len(rows), days)
    return len(rows)


def load_truth(folder: str) -> dict[str, dict[str, int]]:
    """file name -> {"right": 0|1, "left": 0|1} from a dataset's labels.csv (reader studies)."""
    if not folder:
        return {}
    from hipcad.runtime.evaluation.dataset import load_dataset

    dataset = load_dataset(folder, check_files=False)
    return {Path(r.file).name: {side: int(label.fracture) for side, label in r.sides.items()} for r in dataset}


def free_mb(folder: Path) -> float:
    return shutil.disk_usage(folder).free / 2**20


def dump(record: dict) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=False) + "\n").encode("utf-8")
