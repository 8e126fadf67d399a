"""The hot folder: which files are complete and may be taken.

A file becomes a *candidate* on close-after-write or when it is moved into the folder (inotify),
on any change (polling observer, for network shares where inotify sees nothing), and at every full
rescan (at start, on a timer, and after the kernel's inotify queue overflowed). Never on create. A
candidate is *ready* once its size and mtime have not changed for ``settle_s`` seconds.

Names starting with '.' and the usual partial-transfer suffixes are ignored (writers that copy to a
temporary name and rename are handled by the move event), and so is anything that is not a regular
file (a symlink is never followed: it could point anywhere).
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEventHandler

log = logging.getLogger(__name__)

PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".filepart", ".crdownload", "~")
INOTIFY_LOGGER = "watchdog.observers.inotify_c"


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
            self.hot.notice(event.src_path)

    def on_moved(self, event) -> None:  # IN_MOVED_TO (a rename into or within the folder)
        if event.is_directory:
            self.hot.request_rescan()
        else:
            self.hot.notice(event.dest_path)

    def on_created(self, event) -> None:
        # inotify: never act on create (the file is still being written). Polling: the observer
        # reports only created/modified, so they make a candidate; the settle check guards it.
        if self.hot.polling and not event.is_directory:
            self.hot.notice(event.src_path)
        elif event.is_directory:
            self.hot.request_rescan()  # files may have landed before the new folder was watched

    def on_modified(self, event) -> None:
        if self.hot.polling and not event.is_directory:
            self.hot.notice(event.src_path)


class _OverflowHook(logging.Handler):
    """watchdog reports an inotify queue overflow only in its log: turn that into a rescan."""

    def __init__(self, hot: "HotFolder") -> None:
        super().__init__(logging.WARNING)
        self.hot = hot

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in str(record.msg).lower():
            self.hot.request_rescan()


class HotFolder:
    def __init__(self, root: Path, settle_s: float = 1.0, polling: bool = False, poll_interval_s: float = 2.0) -> None:
        self.root = Path(root)
        self.settle_s = settle_s
        self.polling = polling
        self.poll_interval_s = poll_interval_s
        self._events: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._pending: dict[Path, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, unchanged since)
        self._rescan = threading.Event()
        self._observer = None
        self._hook = _OverflowHook(self)
        self._warned: set[Path] = set()

    # -- observer -----------------------------------------------------------------------------
    def start(self) -> None:
        if self.polling:
            from watchdog.observers.polling import PollingObserver

            observer = PollingObserver(timeout=self.poll_interval_s)
        else:
            from watchdog.observers import Observer

            observer = Observer()
        self.root.mkdir(parents=True, exist_ok=True)
        observer.schedule(_Handler(self), str(self.root), recursive=True)
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
    def notice(self, path) -> None:
        self._events.put(os.fsdecode(path))

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

    def ready(self, now: float | None = None) -> list[Path]:
        """Candidates whose size and mtime have been stable for ``settle_s``. They stay candidates
        until :meth:`taken` (a file left in place, e.g. while the disk is full, comes back)."""
        now = time.monotonic() if now is None else now
        while True:
            try:
                path = Path(self._events.get_nowait())
            except queue.Empty:
                break
            if not ignored(path, self.root):
                self._pending.setdefault(path, (-1, -1, now))
        ready = []
        for path, (size, mtime, since) in list(self._pending.items()):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                del self._pending[path]
                continue
            if not stat.S_ISREG(st.st_mode):
                if path not in self._warned:  # once per path, not at every rescan
                    self._warned.add(path)
                    log.warning("hot folder: ignoring an entry that is not a regular file (symlink or device)")
                del self._pending[path]
                continue
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                self._pending[path] = (st.st_size, st.st_mtime_ns, now)
            elif now - since >= self.settle_s:
                ready.append(path)
        return ready

    def taken(self, path: Path) -> None:
        self._pending.pop(path, None)
