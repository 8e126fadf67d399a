"""Durable file operations and the data folder's layout.

Every name under the data folder comes from a content hash or a store id, never from a DICOM
value or the name a file arrived with::

    data/incoming/<sha256>              spooled input, queued or being read
    data/incoming/<sha256>.name         the name it arrived with, until its queue row is written
    data/processed/<sha256>             input whose result is durable
    data/quarantine/<sha256>            input that could not be read
    data/quarantine/<sha256>.reason.txt why
    data/results/<id>.json              the result (no patient identity)
    data/results/<id>.overlay.jpg       radiograph + heatmap + verdicts
    data/results/<id>.image.jpg         the radiograph alone (read-first mode shows this)
    data/outbox/<outbox id>.dcm         a DICOM result (SC or SR) waiting for, or sent to, PACS
    data/db/hipcad.sqlite3              the queue and result store (the kiosk writes only here)
"""

from __future__ import annotations

import re
from pathlib import Path

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def remove_quietly(*paths: Path) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class DataDir:
    """The folders under ``data_dir`` and the file names inside them."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.processed = self.root / "processed"
        self.quarantine = self.root / "quarantine"
        self.results = self.root / "results"
        self.outbox = self.root / "outbox"
        self.db = self.root / "db"

    def create(self) -> "DataDir":
        for folder in (self.root, self.incoming, self.processed, self.quarantine, self.results, self.outbox):
            folder.mkdir(mode=0o750, parents=True, exist_ok=True)
        self.db.mkdir(mode=0o770, exist_ok=True)
        self._move_legacy_store()
        return self

    def _move_legacy_store(self) -> None:
        """Versions before the kiosk and the worker got their own users kept the store in data/."""
        old = self.root / "hipcad.sqlite3"
        if old.exists() and not (self.db / old.name).exists():
            for suffix in ("-wal", "-shm", ""):
                src = old.with_name(old.name + suffix)
                if src.exists():
                    src.rename(self.db / src.name)

    def spool(self, sha: str) -> Path:
        if not SHA256_RE.match(sha):
            raise ValueError("not a sha256")
        return self.incoming / sha

    def received_name(self, sha: str) -> Path:
        """The file holding the name a spooled input arrived with (UTF-8), while it is not queued."""
        return self.spool(sha).with_name(f"{sha}.name")

    def result_json(self, item_id: int) -> Path:
        return self.results / f"{int(item_id)}.json"

    def overlay(self, item_id: int) -> Path:
        return self._image_file(item_id, "overlay")

    def overlay_all(self, item_id: int) -> Path:
        """The overlay with the heatmap on both hips (the main overlay shows it on suspected hips only)."""
        return self._image_file(item_id, "overlay-all")

    def image(self, item_id: int) -> Path:
        return self._image_file(item_id, "image")

    def _image_file(self, item_id: int, kind: str) -> Path:
        """``<id>.<kind>.jpg``; a result written by a version before JPEG overlays keeps its
        ``.png``, which is served, forwarded and deleted by retention like the new files."""
        path = self.results / f"{int(item_id)}.{kind}.jpg"
        legacy = path.with_suffix(".png")
        return legacy if not path.exists() and legacy.exists() else path

    def result_files(self, item_id: int) -> tuple[Path, ...]:
        names = (f"{int(item_id)}.{kind}.{ext}" for kind in ("overlay", "overlay-all", "image") for ext in ("jpg", "png"))
        return (self.result_json(item_id), *(self.results / name for name in names))

    def outbox_file(self, outbox_id: int) -> Path:
        return self.outbox / f"{int(outbox_id)}.dcm"

    def remove_temporaries(self) -> int:
        """Delete half-written files a killed worker left behind (ours and the overlay writer's)."""
        count = 0
        for folder in (self.results, self.incoming, self.processed, self.quarantine, self.outbox):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.name.startswith(".") and path.is_file():
                    path.unlink()
                    count += 1
        return count
