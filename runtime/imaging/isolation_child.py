"""The decoding process of :mod:`.isolation`: started by the pool (``python -c ... main()``), it
confines itself, then decodes one file at a time for as long as its parent wants.

Protocol on the socket (multiprocessing's length-prefixed frames; JSON, never pickle, in both
directions -- the parent does not unpickle what a process that ran untrusted bytes sends):

    child -> parent   {"ready": pid}                          once confined (then it imports what
                                                              decoding needs, then reads the first file)
    parent -> child   {"path", "limits": {...}, "min_side"}
    child -> parent   {"ok": true, "fields": {...}, "tuples": [...], "shape": [r, c], "nbytes", "leaving"}
                      then the pixels (uint8, row-major) as one frame, or
                      {"ok": false, "error": class name, "message", "leaving"}

``leaving``: the child exits after this answer (a codec raised a BaseException or ran out of memory,
or its resident memory stayed above the recycle limit: its state is suspect or bloated).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import resource
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_HEADER_MAX = 1 << 20


def _prctl(*args: int) -> int:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(*args, *([0] * (5 - len(args))))
    except (OSError, AttributeError):  # not Linux
        return -1


_CAPSET = {"x86_64": 126, "aarch64": 91}  # syscall numbers


def _drop_capabilities() -> None:
    """The worker may hold CAP_LEASE (systemd AmbientCapabilities=) to probe hot-folder files for
    writers; a decoding process needs no capability at all (root keeps its own: dropping them would
    change which files it may read)."""
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    number = _CAPSET.get(os.uname().machine)
    if os.geteuid() == 0 or number is None:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (2 words each): all empty
        libc.syscall(number, header, data)
    except (OSError, AttributeError):
        pass


def _vm_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def confine(parent_pid: int) -> None:
    """Die with the parent, no core dumps, no capabilities, the first to go when memory runs out."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a core dump would hold patient data
    _drop_capabilities()
    _first_oom_victim()


def _first_oom_victim() -> None:
    """When the box (or the worker's cgroup: MemoryMax=) runs out of memory, the kernel kills
    this process before the worker: the file is refused, the worker reads on."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")  # raising it needs no privilege
    except OSError:
        pass


def limit_memory(memory_mb: int) -> None:
    """Address space: this process's own size now (imports done) + ``memory_mb``."""
    if memory_mb:
        limit = _vm_bytes("VmSize") + memory_mb * 2**20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:  # never above a limit the service was given (LimitAS=)
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _silence() -> None:
    """Nothing the codecs print (Rust panic messages, library chatter) reaches the journal."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def _arm_cpu(cpu_s: float | None) -> None:
    """A CPU-time backstop for this file, in case the parent cannot kill us in time."""
    if cpu_s:
        used = resource.getrusage(resource.RUSAGE_SELF)
        resource.setrlimit(resource.RLIMIT_CPU, (int(used.ru_utime + used.ru_stime + cpu_s) + 1, resource.RLIM_INFINITY))


WARM_LEVELS = ("none", "images", "all")


def warm(level: str) -> None:
    """Import what decoding imports lazily, so the first file decodes as fast as the next: Pillow
    and its JPEG / PNG plugins ("images"), and pydicom with every codec plugin too ("all"). Best
    effort: what fails here fails again, and is said, when a file needs it."""
    if level == "none":
        return
    try:
        import PIL.Image
        import PIL.JpegImagePlugin  # noqa: F401
        import PIL.PngImagePlugin  # noqa: F401

        if level != "all":
            return
        from pydicom.pixels import get_decoder

        from hipcad.runtime.imaging import dicom  # noqa: F401
        from hipcad.runtime.imaging.transfer_syntaxes import SUPPORTED

        PIL.Image.init()
    except Exception:  # noqa: BLE001
        return
    for uid in SUPPORTED:
        try:
            decoder = get_decoder(uid)
            if decoder.is_encapsulated:
                decoder.available_plugins  # noqa: B018 - imports the plugin modules
        except Exception:  # noqa: BLE001 - a codec that is not installed is reported per file
            pass


def resolve(ref: str | None):
    """The decode function: hipcad's, or ``module:function`` (tests: decoders that crash on purpose)."""
    if not ref:
        from hipcad.runtime.imaging.decode import decode

        return decode
    import importlib

    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def answer(decode, job: dict, memory_mb: int) -> tuple[dict, memoryview | None]:
    """Decode one job: (the JSON answer, the pixels or None)."""
    from hipcad.runtime.errors import BadInputError, HipcadError
    from hipcad.runtime.imaging.limits import DecodeLimits

    try:
        radiograph = decode(job["path"], DecodeLimits(**job["limits"]), job["min_side"])
        return _ok(radiograph)
    except HipcadError as err:
        known = next(c.__name__ for c in type(err).__mro__ if c.__module__ == BadInputError.__module__)
        # the decoder turns a codec's panic or MemoryError into a HipcadError (``raise ... from err``):
        # this process goes all the same, as below
        cause = err.__cause__
        leaving = isinstance(cause, MemoryError) or (cause is not None and not isinstance(cause, Exception))
        return {"ok": False, "error": known, "message": str(err), "leaving": leaving}, None
    except MemoryError:  # a codec that hit the limit may keep what it took: this process goes
        return {"ok": False, "error": "InputTooLargeError", "leaving": True,
                "message": f"decoding needs more than the memory limit of {memory_mb} MB"}, None
    except Exception as err:  # noqa: BLE001 - a bug in a decoder: said, without a traceback
        return {"ok": False, "error": "BadInputError", "leaving": False,
                "message": f"cannot decode the file: internal error ({type(err).__name__}: {_reason(err)})"}, None
    except BaseException as err:  # noqa: BLE001 - a codec's panic (pyo3 PanicException) or a bug
        return {"ok": False, "error": "BadInputError", "leaving": True,
                "message": f"the decoder failed on this file ({type(err).__name__}: {_reason(err)})"}, None


def _reason(err: BaseException) -> str:
    from hipcad.runtime.imaging.quiet import safe_reason

    return safe_reason(err)


def _ok(radiograph) -> tuple[dict, memoryview]:
    import numpy as np

    pixels = np.ascontiguousarray(radiograph.pixels)
    fields = {f.name: getattr(radiograph, f.name) for f in dataclasses.fields(radiograph) if f.name != "pixels"}
    header = {"ok": True, "fields": fields, "tuples": [k for k, v in fields.items() if isinstance(v, tuple)],
              "shape": [int(n) for n in pixels.shape], "dtype": str(pixels.dtype), "nbytes": int(pixels.nbytes),
              "leaving": False}
    return header, memoryview(pixels).cast("B")


def _plain(value):
    """numpy scalars and arrays as Python numbers and lists; anything else JSON cannot carry is an error."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def serve(conn, decode, memory_mb: int, cpu_s: float | None, recycle_mb: int) -> None:
    while True:
        try:
            job = json.loads(conn.recv_bytes(_HEADER_MAX))
        except (EOFError, OSError):
            return  # the parent closed the socket or went away
        _arm_cpu(cpu_s)
        reply, pixels = answer(decode, job, memory_mb)
        if recycle_mb and _vm_bytes("VmRSS") > recycle_mb * 2**20:
            reply["leaving"] = True  # said now, so the parent never sends a file to a process about to exit
        try:
            text = json.dumps(reply, default=_plain)
        except (TypeError, ValueError) as err:  # a field JSON cannot carry: a bug, said for this file
            reply, pixels = {"ok": False, "error": "BadInputError", "leaving": False,
                             "message": f"cannot decode the file: internal error (result not transferable: {err})"}, None
            text = json.dumps(reply)
        try:
            conn.send_bytes(text.encode())
            if pixels is not None:
                conn.send_bytes(pixels)
        except OSError:
            return
        if reply["leaving"]:
            os._exit(3)


def run(fd: int, parent_pid: int, memory_mb: int, cpu_s: float | None, recycle_mb: int, level: str,
        decoder: str | None) -> None:
    """Serve the parent on the socket ``fd`` until it goes away. "ready" is said as soon as this
    process is confined and can decode; the imports that make the first file fast follow while the
    parent does its own start-up (say, loading the model)."""
    confine(parent_pid)
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    decode = resolve(decoder)
    conn.send_bytes(json.dumps({"ready": os.getpid()}).encode())
    warm(level)
    limit_memory(memory_mb)
    _silence()  # after the imports: an import error still reaches the parent's stderr
    serve(conn, decode, memory_mb, cpu_s, recycle_mb)


def main(argv: list[str] | None = None) -> None:
    """``FD PARENT_PID MEMORY_MB CPU_S RECYCLE_MB WARM [DECODER]``: a process started by fork+exec."""
    args = sys.argv[1:] if argv is None else argv
    run(int(args[0]), int(args[1]), int(args[2]), float(args[3]) or None, int(args[4]), args[5],
        args[6] if len(args) > 6 else None)
