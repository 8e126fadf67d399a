"""The modality's side of ``hipcad bench --appliance``: a fresh copy of a radiograph for every drop
(the box reads an image it has seen once only: a new SOP Instance UID for DICOM, a new comment
for JPEG, a new text chunk for PNG), its delivery the way a modality sends it, and the watcher a
browser showing the kiosk runs to say when the verdict is on its screen.

Each delivery returns the moment the file was complete (seconds since the epoch, the clock the
worker and the browser use too): for ``rename`` the rename of a file written into the hot folder
under a hidden name (which the worker ignores), for ``close`` the close after writing it under its
own name, for ``cstore`` the moment the C-STORE was answered.
"""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

from hipcad.runtime.imaging.sniff import HEAD_BYTES, sniff

DELIVERIES = ("rename", "close", "cstore")
CALLING_AE = "HIPCADBENCH"


class Source:
    """One input kind: its bytes (or DICOM dataset), and fresh copies of it on demand."""

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path
        with open(path, "rb") as fh:
            self.format = sniff(fh.read(HEAD_BYTES))
        if self.format not in ("dicom", "jpeg", "png"):
            raise ValueError(f"{path.name}: not a DICOM, JPEG or PNG file")
        self.suffix = {"dicom": ".dcm", "jpeg": ".jpg", "png": ".png"}[self.format]
        self.data = path.read_bytes()
        self.dataset = None
        if self.format == "dicom":
            import pydicom

            self.dataset = pydicom.dcmread(path)  # pixel data stays encoded
        self.uid: str | None = None  # the SOP Instance UID of the last copy

    def copy(self, serial: int) -> bytes:
        """The radiograph with a unique identity (no pixel changed)."""
        if self.format == "dicom":
            from io import BytesIO

            from pydicom.uid import generate_uid

            self.uid = generate_uid()
            self.dataset.SOPInstanceUID = self.uid
            self.dataset.file_meta.MediaStorageSOPInstanceUID = self.uid
            buffer = BytesIO()
            self.dataset.save_as(buffer, enforce_file_format=True)
            return buffer.getvalue()
        tag = f"hipcad bench {serial} {time.time_ns()}".encode()
        if self.format == "jpeg":  # a COM segment right after SOI
            return self.data[:2] + b"\xff\xfe" + struct.pack(">H", len(tag) + 2) + tag + self.data[2:]
        chunk = b"tEXt" + b"Comment\0" + tag  # PNG: a text chunk right after IHDR (8 + 25 bytes)
        return self.data[:33] + struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk)) + self.data[33:]


def deliver(how: str, source: Source, serial: int, hot: Path, dicom: tuple[str, int, str] | None) -> tuple[float, str, dict]:
    """Send one fresh copy; returns (when it was complete, its name in the hot folder or its
    SOP Instance UID, extra figures such as the C-STORE's own duration)."""
    data = source.copy(serial)
    name = f"{source.name}-{how}-{serial}{source.suffix}"
    if how == "rename":
        staged = hot / f".{name}.part"  # hidden: the hot folder ignores it until the rename
        staged.write_bytes(data)
        complete = time.time()
        staged.rename(hot / name)
        return complete, name, {}
    if how == "close":
        with open(hot / name, "wb") as fh:
            fh.write(data)
        return time.time(), name, {}
    if how == "cstore":
        return cstore(source, dicom)
    raise ValueError(f"unknown delivery {how!r}")


def cstore(source: Source, dicom: tuple[str, int, str]) -> tuple[float, str, dict]:
    from pynetdicom import AE

    host, port, called = dicom
    ds = source.dataset
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise ConnectionError(f"the DICOM listener {called}@{host}:{port} refused or did not answer the association")
    try:
        start = time.time()
        status = assoc.send_c_store(ds)
        answered = time.time()
    finally:
        assoc.release()
    if not status or status.Status != 0x0000:
        raise ConnectionError(f"C-STORE answered {status.Status if status else 'nothing'} (not Success)")
    return answered, source.uid, {"cstore_ms": round((answered - start) * 1000.0, 1)}


#: Run in the kiosk's page (Playwright's evaluate, outside the page's CSP) before a drop: resolves
#: with when (Date.now(), the epoch in ms) the news reached the page and how ("hipcad:news",
#: announced by kiosk.js), when a study newer than ``afterId`` was in the page, painted (the frame
#: after), and its overlay image loaded.
WATCH_JS = """([afterId, timeoutMs]) => {
  const marks = { news: [] };
  window.__hipcadBench = new Promise((resolve, reject) => {
    const onNews = (e) => marks.news.push({ t: Date.now(), via: e.detail.via });
    document.addEventListener("hipcad:news", onNews);
    let observer = null;
    const end = () => { observer.disconnect(); document.removeEventListener("hipcad:news", onNews); clearTimeout(timer); };
    const timer = setTimeout(() => { end(); reject(new Error("no new study on the screen after " + timeoutMs + " ms")); }, timeoutMs);
    const done = () => { if (marks.painted && marks.image !== undefined) { end(); resolve(marks); } };
    const check = () => {
      const s = document.querySelector("section.study");
      if (marks.dom || !s || Number(s.dataset.id) <= afterId) { return; }
      marks.dom = Date.now();
      marks.id = Number(s.dataset.id);
      marks.status = s.classList.contains("failed") ? "failed" : "done";
      marks.verdicts = Array.from(s.querySelectorAll(".verdict .words")).map((e) => e.textContent.trim());
      requestAnimationFrame(() => setTimeout(() => { marks.painted = Date.now(); done(); }, 0));
      const img = s.querySelector("figure img");
      if (!img) { marks.image = null; return; }
      const loaded = () => { marks.image = Date.now(); done(); };
      if (img.complete && img.naturalWidth) { loaded(); return; }
      img.addEventListener("load", loaded, { once: true });
      img.addEventListener("error", () => { marks.image = null; done(); }, { once: true });
    };
    observer = new MutationObserver(check);
    observer.observe(document.body, { childList: true, subtree: true });
    check();
  });
}"""
