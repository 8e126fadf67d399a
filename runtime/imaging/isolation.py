"""Decoding untrusted files in disposable processes, so that nothing a file does costs more than
that file.

A codec can panic (pylibjpeg-rle raises pyo3's ``PanicException``, a ``BaseException``), segfault,
hang in C code holding the GIL, or allocate without bound; in the worker's process any of these
would stop the box. :class:`DecodePool` keeps 1..``size`` warm decoding processes
(:mod:`.isolation_child`, each running :func:`hipcad.runtime.imaging.decode.decode`) and hands each
one file at a time, under

* a wall-clock timeout per file (the process is killed with SIGKILL and replaced),
* an address-space limit (RLIMIT_AS: the process's own size after start-up + ``memory_mb``),
* a CPU-time backstop per file (RLIMIT_CPU), no core dumps (a core would hold patient data), no
  capabilities, and PR_SET_PDEATHSIG: a decoding process dies with the program that started it.

A crash, a hang, a runaway allocation or a panic becomes a :class:`BadInputError` for that file that
says what happened; the process is replaced in the background and the next file goes on. Faults that
are not the file's -- no process could be started, the pool was closed while the file was being
decoded (the program is stopping) -- are :class:`DecoderUnavailableError`: the caller keeps the file.

Processes are started by fork+exec of this interpreter (never a plain fork of a multi-threaded
worker), from one spawner thread that lives as long as the pool (PR_SET_PDEATHSIG follows the
*thread* that started a process). Pixels come back as raw bytes, everything else as JSON.

:class:`InProcessDecoder` has the same ``decode`` for library use, tests and ``--no-isolation``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from hipcad.runtime.errors import (
    BadInputError,
    CodecUnavailableError,
    DecoderStoppedError,
    DecoderUnavailableError,
    InputTooLargeError,
)
from hipcad.runtime.imaging.isolation_child import WARM_LEVELS
from hipcad.runtime.imaging.isolation_process import Child, describe_exit, fork_is_safe
from hipcad.runtime.imaging.limits import DEFAULT_LIMITS, DecodeLimits
from hipcad.runtime.imaging.radiograph import Radiograph

log = logging.getLogger("hipcad.decoder")

_ERRORS = {cls.__name__: cls for cls in (BadInputError, InputTooLargeError, CodecUnavailableError)}
_HEADER_MAX = 1 << 22


@dataclass(frozen=True)
class IsolationLimits:
    """What one decoding process may spend on one file."""

    timeout_s: float = 30.0  # wall clock, from sending the file to the answer
    memory_mb: int = 3072  # address space on top of the process's own size after start-up
    cpu_s: float | None = 60.0  # CPU seconds per file (a backstop; the wall-clock timeout comes first)
    max_files: int = 500  # a process is replaced after this many files (fragmentation, slow leaks)
    recycle_mb: int = 1024  # ... or when its resident memory after a file is above this (a codec leaked)


class InProcessDecoder:
    """:func:`~hipcad.runtime.imaging.decode.decode` in this process. A codec's BaseException becomes
    a :class:`BadInputError`; a segfault, a hang or a runaway allocation is not contained."""

    def decode(self, path, limits: DecodeLimits = DEFAULT_LIMITS, min_side: int | None = None) -> Radiograph:
        from hipcad.runtime.imaging.decode import decode
        from hipcad.runtime.imaging.quiet import safe_reason

        try:
            return decode(path, limits, min_side)
        except (Exception, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as err:  # pyo3's PanicException and the like
            raise BadInputError(f"the decoder failed on this file ({type(err).__name__}: {safe_reason(err)})") from err

    def status(self) -> dict:
        return {"isolated": False}

    def close(self) -> None:
        pass


class DecodePool:
    """Decode files in 1..``size`` warm processes; ``decode(path, limits, min_side)`` as
    :func:`~hipcad.runtime.imaging.decode.decode`, with the same errors. Thread-safe: up to ``size``
    files at once, further callers wait for a free process.

    ``decoder``: ``"module:function"`` run in the processes instead of hipcad's decode (tests).
    ``warm``: what the processes import right after they start, while the caller does its own
    start-up: "all" (Pillow, pydicom and every codec: the worker), "images" (Pillow only: ``hipcad
    predict``, where the codecs would compete for the CPU with loading the model) or "none".
    ``fork``: the first process is made by a plain fork when that is safe (:meth:`start` called from
    the main and only thread: ``hipcad predict``), inheriting the modules already imported; every
    other process by fork+exec."""

    def __init__(self, size: int = 1, limits: IsolationLimits = IsolationLimits(), decoder: str | None = None,
                 warm: str = "all", fork: bool = False) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        if warm not in WARM_LEVELS:
            raise ValueError(f"warm must be none, images or all, not {warm!r}")
        self.size, self.limits, self.decoder, self.warm, self.fork = size, limits, decoder, warm, fork
        # every process is started from this one thread (PR_SET_PDEATHSIG follows the starting thread)
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hipcad-decoder-spawner")
        self._cond = threading.Condition()
        self._idle: list[Child] = []
        self._busy: set[Child] = set()
        self._count = 0  # processes idle, busy or being started
        self._closed = False
        self.stats = dict.fromkeys(("files", "crashed", "timed_out", "recycled", "replaced", "start_failures"), 0)

    # -- life cycle -------------------------------------------------------------------------------
    def start(self, wait: bool = True) -> None:
        """Start one process now (else the first file does), or with ``wait=False`` in the background
        (overlapping with, say, loading the model)."""
        with self._cond:
            if self._count or self._closed:
                return
            self._count += 1
        forked = None
        if self.fork and fork_is_safe():
            try:
                forked = Child(self.limits, self.decoder, self.warm, fork=True)
            except DecoderUnavailableError:
                forked = None  # fork+exec instead
        if not wait:
            self._spawner.submit(self._start_in_background, forked)  # None: fork+exec there
            return
        try:
            if forked is None:
                child = self._new_child()  # counts its own start failures
            else:
                try:
                    child = forked.ready()
                except DecoderUnavailableError:
                    self.stats["start_failures"] += 1
                    raise
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify_all()
            raise
        self._add_idle(child)

    def close(self) -> None:
        """Stop every process now; a file being decoded ends in :class:`DecoderStoppedError`."""
        with self._cond:
            self._closed = True
            idle, self._idle, busy = self._idle, [], list(self._busy)
            self._cond.notify_all()
        for child in idle:
            child.kill()
        for child in busy:  # the process only: its caller's thread sees the socket close and cleans up
            try:
                os.kill(child.pid, signal.SIGKILL)
            except OSError:
                pass
        self._spawner.shutdown(wait=False)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def pids(self) -> list[int]:
        """The decoding processes running now."""
        with self._cond:
            return [child.pid for child in (*self._idle, *self._busy)]

    def status(self) -> dict:
        with self._cond:
            processes = len(self._idle) + len(self._busy)
        return {"isolated": True, "processes": processes, "timeout_s": self.limits.timeout_s,
                "memory_mb": self.limits.memory_mb, **self.stats}

    # -- decoding ---------------------------------------------------------------------------------
    def decode(self, path, limits: DecodeLimits = DEFAULT_LIMITS, min_side: int | None = None) -> Radiograph:
        job = json.dumps({"path": os.fspath(path), "limits": dataclasses.asdict(limits), "min_side": min_side}).encode()
        child = self._acquire()
        healthy = False
        try:
            try:
                child.conn.send_bytes(job)
            except OSError:  # it died while idle (the OOM killer...): not this file's doing
                self.stats["replaced"] += 1
                self._forget(child)
                child = None
                child = self._acquire()
                child.conn.send_bytes(job)
            child.files += 1
            self.stats["files"] += 1
            header, pixels = self._receive(child, self.limits.timeout_s, limits)
            healthy = not header.get("leaving")
            self.stats["recycled"] += not healthy
            if header.get("ok"):
                return _radiograph(header, pixels)
            raise _ERRORS.get(header.get("error"), BadInputError)(str(header.get("message") or "cannot decode the file"))
        finally:
            if child is not None:
                self._release(child, healthy)

    def _receive(self, child: Child, timeout: float, limits: DecodeLimits) -> tuple[dict, bytearray | None]:
        from multiprocessing import BufferTooShort

        deadline = time.monotonic() + timeout
        try:
            if not child.conn.poll(timeout):
                self._stopping()
                self.stats["timed_out"] += 1
                raise BadInputError(f"decoding took longer than {timeout:g} s; the decoder was stopped "
                                    "(the file may be crafted to hang it)")
            header = json.loads(child.conn.recv_bytes(_HEADER_MAX))
            if not isinstance(header, dict):
                raise ValueError("not an answer")
            if not header.get("ok"):
                return header, None
            nbytes = _checked_size(header, limits)
            pixels = bytearray(nbytes)
            if nbytes and not child.conn.poll(max(deadline - time.monotonic(), 1.0)):
                raise EOFError
            if nbytes and child.conn.recv_bytes_into(pixels) != nbytes:
                raise EOFError
            return header, pixels
        except (EOFError, OSError, ValueError, BufferTooShort):
            self._stopping()
            self.stats["crashed"] += 1
            raise BadInputError(describe_exit(child.exitcode()) + " while reading this file") from None

    def _stopping(self) -> None:
        if self._closed:
            raise DecoderStoppedError("decoding was interrupted: hipcad is stopping (the file is kept)")

    # -- processes --------------------------------------------------------------------------------
    def _new_child(self) -> Child:
        try:
            return self._spawner.submit(lambda: Child(self.limits, self.decoder, self.warm).ready()).result()
        except RuntimeError as err:  # the spawner was shut down: the pool is closed
            raise DecoderStoppedError("decoding was interrupted: hipcad is stopping (the file is kept)") from err
        except DecoderUnavailableError:
            self.stats["start_failures"] += 1
            raise

    def _start_in_background(self, child: Child | None = None) -> None:
        try:
            child = (child or Child(self.limits, self.decoder, self.warm)).ready()
        except DecoderUnavailableError as err:
            self.stats["start_failures"] += 1
            log.error("%s", err)
            with self._cond:
                self._count -= 1
                self._cond.notify_all()
            return
        self._add_idle(child)

    def _add_idle(self, child: Child) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(child)
                self._cond.notify()
                return
        child.kill()

    def _acquire(self) -> Child:
        with self._cond:
            while True:
                if self._closed:
                    raise DecoderStoppedError("decoding was interrupted: hipcad is stopping (the file is kept)")
                while self._idle:
                    child = self._idle.pop()
                    if child.alive():
                        self._busy.add(child)
                        return child
                    self.stats["replaced"] += 1  # died while idle: replaced below
                    child.kill()
                    self._count -= 1
                if self._count < self.size:
                    self._count += 1
                    break
                self._cond.wait()
        try:
            child = self._new_child()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            self._busy.add(child)
        return child

    def _forget(self, child: Child) -> None:
        child.kill()
        with self._cond:
            self._busy.discard(child)
            self._count -= 1

    def _release(self, child: Child, healthy: bool) -> None:
        with self._cond:
            self._busy.discard(child)
            if healthy and not self._closed and child.files < self.limits.max_files and child.alive():
                self._idle.append(child)
                self._cond.notify()
                return
        child.kill()  # crashed, hung, panicked, bloated or worn out: a fresh one is started now
        with self._cond:
            if self._closed:
                self._count -= 1
                return
        try:
            self._spawner.submit(self._start_in_background)
        except RuntimeError:  # closed meanwhile
            with self._cond:
                self._count -= 1


def _checked_size(header: dict, limits: DecodeLimits) -> int:
    """The byte count of the pixels the child announced, checked against the limits before anything
    is allocated (the child ran untrusted bytes: its word is not trusted either)."""
    shape, nbytes = header.get("shape"), header.get("nbytes")
    if (header.get("dtype") != "uint8" or not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(n, int) and 0 < n <= limits.max_side for n in shape)
            or nbytes != shape[0] * shape[1] or nbytes > limits.max_pixels):
        raise ValueError("inconsistent image")
    return nbytes


def _radiograph(header: dict, pixels: bytearray) -> Radiograph:
    """The child's Radiograph rebuilt and checked (the child ran untrusted bytes)."""
    rows, cols = header["shape"]
    fields = dict(header.get("fields") or {})
    for name in header.get("tuples") or ():
        if isinstance(fields.get(name), list):
            fields[name] = tuple(fields[name])
    known = {f.name for f in dataclasses.fields(Radiograph)} - {"pixels"}
    try:
        return Radiograph(pixels=np.frombuffer(pixels, dtype=np.uint8).reshape(rows, cols),  # writable: a bytearray
                          **{k: v for k, v in fields.items() if k in known})
    except (TypeError, ValueError) as err:
        raise BadInputError(f"the decoder returned an inconsistent result ({type(err).__name__})") from err
