"""The hot folder: which files are complete and may be taken.

How a file becomes a *candidate*, and what that says about it:

* **trusted** -- closed after writing (IN_CLOSE_WRITE) or moved into the folder, from inside or from
  outside it (IN_MOVED_TO): its writer is done. Ready at once, unless a writer check objects.
* **found** -- by a rescan (at start, every ``rescan_interval_s``, after the kernel's inotify queue
  overflowed, after a folder was created or moved in) or by the polling observer (network shares,
  where inotify sees nothing). Nothing is known: ready once its size and mtime have not changed for
  ``settle_s`` *and* no process has it open for writing; where that cannot be checked, only after
  ``quiet_s`` without a change.

A write to a candidate (IN_MODIFY, or a changed size / mtime) withdraws its trust. A file is never
taken on creation (IN_CREATE): its IN_CLOSE_WRITE follows.

The writer check (:mod:`.writers`): a read-lease probe per candidate; where the kernel cannot tell
(not the file's owner and no CAP_LEASE, a network filesystem), one ``/proc`` scan per pass, trusted
only where it could see every process; in polling mode (a network share: remote writers are
invisible) only the lease's answer counts. :attr:`HotFolder.writer_check` says what the last pass
could rely on: "lease", "proc" or "none" (the quiet period only).

Names starting with '.' and the usual partial-transfer suffixes are ignored (writers that copy to a
temporary name and rename are seen by the rename), and so is anything that is not a regular file
(a symlink is never followed: it could point anywhere).

The interface, for the worker's main loop: :meth:`~HotFolder.start` / :meth:`~HotFolder.stop`,
:meth:`~HotFolder.ready` (at most ``limit`` paths, cheap enough to call ten times a second),
:meth:`~HotFolder.taken` once a file is in the queue, :meth:`~HotFolder.busy` when taking it found a
writer (it waits for its close), :meth:`~HotFolder.rescan` when :meth:`~HotFolder.rescan_due`.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEventHandler,
)

from hipcad.appliance.worker.writers import ProcScan, ignore_sigio, lease_probe

log = logging.getLogger(__name__)

PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".filepart", ".crdownload", "~")
INOTIFY_LOGGER = "watchdog.observers.inotify_c"
TRUSTED, FOUND, MODIFIED = "trusted", "found", "modified"
_NOT_SCANNED = object()  # no /proc scan in this pass yet
EVENTS = (FileClosedEvent, FileMovedEvent, DirMovedEvent, FileCreatedEvent, DirCreatedEvent, FileModifiedEvent)


def ignored(path: Path, root: Path) -> bool:
    try:
        rel = path.relative_to(root)
    except ValueError:
        return True
    return any(part.startswith(".") for part in rel.parts) or path.name.lower().endswith(PARTIAL_SUFFIXES)


class _Handler(FileSystemEventHandler):
    def __init__(self, hot: "HotFolder") -> None:
        self.hot = hot

    def on_closed(self, event) -> None:  # IN_CLOSE_WRITE
        if not event.is_directory:
            self.hot.notice(event.src_path, TRUSTED)

    def on_moved(self, event) -> None:  # IN_MOVED_TO, from inside the folder or (src_path "") from outside
        if event.is_directory:
            self.hot.request_rescan()
        elif event.dest_path:
            self.hot.notice(event.dest_path, TRUSTED)

    def on_created(self, event) -> None:
        # inotify: never on create (its close follows). Polling: the observer reports only
        # created / modified / moved, so they make a candidate that has to prove itself.
        if event.is_directory:
            self.hot.request_rescan()  # files may have landed before the new folder was watched
        elif self.hot.polling:
            self.hot.notice(event.src_path, FOUND)

    def on_modified(self, event) -> None:  # IN_MODIFY: someone writes
        if not event.is_directory:
            self.hot.notice(event.src_path, FOUND if self.hot.polling else MODIFIED)


class _OverflowHook(logging.Handler):
    """watchdog reports an inotify queue overflow only in its log: turn that into a rescan."""

    def __init__(self, hot: "HotFolder") -> None:
        super().__init__(logging.WARNING)
        self.hot = hot

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in str(record.msg).lower():
            self.hot.request_rescan()


@dataclass
class _Candidate:
    size: int = -1
    mtime_ns: int = -1
    since: float = 0.0  # unchanged since (monotonic)
    trusted: bool = False


class HotFolder:
    def __init__(self, root: Path, settle_s: float = 1.0, polling: bool = False, poll_interval_s: float = 2.0,
                 quiet_s: float = 30.0) -> None:
        self.root = Path(root)
        self.settle_s = settle_s
        self.quiet_s = max(quiet_s, settle_s)
        self.polling = polling
        self.poll_interval_s = poll_interval_s
        self._events: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._pending: dict[Path, _Candidate] = {}
        self._rescan = threading.Event()
        self._observer = None
        self._hook = _OverflowHook(self)
        self._warned: set[Path] = set()
        self._proc = ProcScan(self.root)
        #: what the writer check of the last pass relied on: "lease", "proc" or "none"
        self.writer_check = "lease"

    # -- observer -----------------------------------------------------------------------------
    def start(self) -> None:
        if self.polling:
            from watchdog.observers.polling import PollingObserver

            observer = PollingObserver(timeout=self.poll_interval_s)
        else:
            try:  # moves from outside the folder as moves, not as creations
                from watchdog.observers.inotify import InotifyObserver

                observer = InotifyObserver(generate_full_events=True)
            except (ImportError, OSError):  # not Linux
                from watchdog.observers import Observer

                observer = Observer()
        ignore_sigio()
        self.root.mkdir(parents=True, exist_ok=True)
        # only what says something about completeness: not the opens and reads of our own checks
        observer.schedule(_Handler(self), str(self.root), recursive=True, event_filter=list(EVENTS))
        observer.daemon = True
        observer.start()
        self._observer = observer
        logging.getLogger(INOTIFY_LOGGER).addHandler(self._hook)
        self.request_rescan()

    def stop(self) -> None:
        logging.getLogger(INOTIFY_LOGGER).removeHandler(self._hook)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)

    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    # -- candidates ---------------------------------------------------------------------------
    def notice(self, path, how: str = FOUND) -> None:
        """(observer thread) ``path`` was closed or moved in (TRUSTED), written to (MODIFIED) or seen."""
        self._events.put((os.fsdecode(path), how))

    def request_rescan(self) -> None:
        self._rescan.set()

    def rescan_due(self) -> bool:
        return self._rescan.is_set()

    def rescan(self) -> int:
        """Make every file in the folder a candidate."""
        self._rescan.clear()
        count = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                self.notice(os.path.join(dirpath, name))
                count += 1
        return count

    def pending(self) -> int:
        return len(self._pending)

    def ready(self, limit: int = 64, now: float | None = None) -> list[Path]:
        """At most ``limit`` candidates that may be taken now, oldest first. They stay candidates
        until :meth:`taken` (a file left in place, e.g. while the disk is full, comes back)."""
        now = time.monotonic() if now is None else now
        self._drain(now)
        ready: list[Path] = []
        scan = _NOT_SCANNED  # at most one /proc scan per pass, reliable or not
        for path, c in list(self._pending.items()):
            if len(ready) >= limit:
                break
            if not self._still_there(path, c, now):
                continue
            if not c.trusted and now - c.since < self.settle_s:
                continue
            verdict = lease_probe(path)
            if verdict is None:
                if scan is _NOT_SCANNED:
                    scan = self._scan()
                verdict = self._scan_verdict(path, scan)
            else:
                self.writer_check = "lease"
            if verdict is False:  # open for writing: wait for its close (or, blind, the quiet period)
                c.since, c.trusted = now, False
            elif verdict or c.trusted or now - c.since >= self.quiet_s:
                ready.append(path)
        return ready

    def taken(self, path: Path) -> None:
        self._pending.pop(path, None)

    def busy(self, path: Path) -> None:
        """Taking ``path`` found a writer: it waits for its close (or its quiet period) again."""
        c = self._pending.get(path)
        if c is not None:
            c.since, c.trusted = time.monotonic(), False

    # -- internals ----------------------------------------------------------------------------
    def _drain(self, now: float) -> None:
        while True:
            try:
                raw, how = self._events.get_nowait()
            except queue.Empty:
                return
            path = Path(raw)
            if ignored(path, self.root):
                continue
            c = self._pending.get(path)
            if c is None:
                c = self._pending[path] = _Candidate(since=now)
            if how == MODIFIED:
                c.since, c.trusted = now, False
            elif how == TRUSTED:
                c.trusted = True

    def _still_there(self, path: Path, c: _Candidate, now: float) -> bool:
        try:
            st = os.lstat(path)
        except OSError:
            del self._pending[path]
            return False
        if not stat.S_ISREG(st.st_mode):
            if path not in self._warned:  # once per path, not at every rescan
                self._warned.add(path)
                log.warning("hot folder: ignoring an entry that is not a regular file (symlink or device)")
            del self._pending[path]
            return False
        if (st.st_size, st.st_mtime_ns) != (c.size, c.mtime_ns):
            if c.size != -1:
                c.since, c.trusted = now, False  # changed after what vouched for it
            c.size, c.mtime_ns = st.st_size, st.st_mtime_ns
        return True

    def _scan(self):
        """One /proc scan for this pass (None in polling mode); :meth:`_scan_verdict` decides
        whether it can be relied on."""
        if self.polling:
            return None  # a network share: its writers are on other machines
        return self._proc.scan()

    def _scan_verdict(self, path: Path, scan) -> bool | None:
        if scan is None or not scan.reliable:  # polling, or /proc could not show every process
            self.writer_check = "none"
            return None
        self.writer_check = "proc"
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino) not in scan.writing
