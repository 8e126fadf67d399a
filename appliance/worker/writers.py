"""Is a process still writing a hot-folder file? Two Linux answers, and taking a file so that the
answer stays true until it is in the spool.

* A read lease (``fcntl F_SETLEASE F_RDLCK`` on a read-only descriptor) is granted only when no
  process on this machine, of any user, has the file open for writing (EAGAIN otherwise). It needs
  the file's owner uid or CAP_LEASE, and a local filesystem (network mounts answer EINVAL). While
  the lease is held, a process opening the file for writing waits in the kernel until it is released,
  and the lease shows the pending break (``F_GETLEASE``).
* ``/proc/*/fd`` (:class:`ProcScan`), where the lease cannot tell: the files under the hot folder
  that a process has open with write access. It sees other users' processes only with
  CAP_SYS_PTRACE; it says how many it could not look into, and whether ``/proc`` is mounted with
  ``hidepid`` (systemd's ``ProtectProc=``: other users' processes are then simply absent), so that
  "no writer" is trusted only when it saw everyone (:attr:`ScanResult.reliable`).

Neither sees a writer on another machine (an NFS or SMB client writing into a share this box
mounts): there only a quiet period helps (:mod:`.hotfolder`).

The kernel tells a lease holder about a break with SIGIO, whose default action ends the process:
:func:`ignore_sigio` (main thread, at start) and ``F_SETOWN 0`` on every lease keep it from doing so.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import signal
import threading
from dataclasses import dataclass, field

from hipcad.runtime.errors import HipcadError

O_ACCMODE = 0o3
_BUSY = (errno.EAGAIN, errno.EBUSY)


class StillOpenError(HipcadError):
    """A process still has the file open for writing, or changed it while it was taken."""


def ignore_sigio() -> None:
    """Ignore SIGIO (the lease-break signal) in this process; only the main thread can do it."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGIO) == signal.SIG_DFL:
        signal.signal(signal.SIGIO, signal.SIG_IGN)


def _set_lease(fd: int) -> bool | None:
    """True: a read lease is held on ``fd``; False: a writer has the file open; None: cannot tell."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as err:
        return False if err.errno in _BUSY else None
    fcntl.fcntl(fd, fcntl.F_SETOWN, 0)  # a break then signals nobody (see the module's docstring)
    return True


def lease_probe(path) -> bool | None:
    """True: no process has ``path`` open for writing; False: one does; None: cannot tell here."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        held = _set_lease(fd)
        if held:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return held
    finally:
        os.close(fd)


@dataclass
class ScanResult:
    writing: set = field(default_factory=set)  # (st_dev, st_ino) open for writing under the folder
    unreadable: int = 0  # processes whose descriptors could not be read
    hidden: bool = False  # /proc hides other users' processes (hidepid), or whether it does is unknown

    @property
    def reliable(self) -> bool:
        """It saw every process: "no writer" can be trusted."""
        return not self.unreadable and not self.hidden


#: hidepid values under which every process is listed (``0``, or ``off`` since Linux 5.8)
_HIDEPID_OFF = ("0", "off")


def proc_hides_processes(mountinfo: str) -> bool:
    """Whether the ``/proc`` mount described in ``mountinfo`` (the text of /proc/self/mountinfo) may
    hide other users' processes: a ``hidepid`` super option other than 0/off (1/noaccess,
    2/invisible, 4/ptraceable), or no procfs found at /proc (cannot tell)."""
    options = None
    for line in mountinfo.splitlines():
        mount, sep, tail = line.partition(" - ")
        fields = mount.split()
        if not sep or len(fields) < 5 or fields[4] != "/proc":
            continue
        tail_fields = tail.split()
        # the last mount at /proc is the one on top; one that is not procfs cannot be vouched for
        options = tail_fields[2].split(",") if len(tail_fields) >= 3 and tail_fields[0] == "proc" else None
    if options is None:
        return True
    values = [opt.partition("=")[2] for opt in options if opt.startswith("hidepid=")]
    return any(value not in _HIDEPID_OFF for value in values)


class ProcScan:
    """One pass over /proc/*/fd: which files under ``root`` some process has open for writing."""

    #: where the /proc mount's options are read (a test points it elsewhere)
    mountinfo = "/proc/self/mountinfo"

    def __init__(self, root) -> None:
        self.prefix = os.path.realpath(root).rstrip("/") + "/"

    def _hidden(self) -> bool:
        try:
            with open(self.mountinfo, encoding="utf-8", errors="surrogateescape") as fh:
                return proc_hides_processes(fh.read())
        except OSError:
            return True  # cannot tell: not trusted

    def scan(self) -> ScanResult:
        result = ScanResult(hidden=self._hidden())
        try:
            pids = [name for name in os.listdir("/proc") if name.isdigit()]
        except OSError:
            result.unreadable = 1
            return result
        for pid in pids:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except PermissionError:
                result.unreadable += 1
                continue
            except OSError:  # the process ended meanwhile
                continue
            for fd in fds:
                try:
                    if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith(self.prefix):
                        continue
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                    with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                        flags = next(int(line.split()[1], 8) for line in fh if line.startswith("flags:"))
                except (OSError, StopIteration, ValueError):
                    continue
                if flags & O_ACCMODE:
                    result.writing.add((st.st_dev, st.st_ino))
        return result


class Taking:
    """A hot-folder file opened to be taken: hashed from this descriptor, under a read lease where the
    kernel grants one, so that no writer can have it open from the check to the move into the spool.

    Raises :class:`StillOpenError` when a writer has it open. ``lease`` says whether one is held."""

    def __init__(self, path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        held = _set_lease(self.fd)
        if held is False:
            os.close(self.fd)
            raise StillOpenError("a process still has the file open for writing")
        self.lease = bool(held)
        self._seen: tuple[int, int] | None = None

    def hash(self) -> tuple[str, int]:
        """(sha256, size) of the content, read from the descriptor."""
        before = os.fstat(self.fd)
        digest = hashlib.sha256()
        os.lseek(self.fd, 0, os.SEEK_SET)
        while chunk := os.read(self.fd, 1 << 20):
            digest.update(chunk)
        self._seen = (before.st_size, before.st_mtime_ns)
        if not self.unchanged():
            raise StillOpenError("the file changed while it was read")
        return digest.hexdigest(), before.st_size

    def unchanged(self) -> bool:
        """No writer asked for the file (lease) and its size and mtime are those that were hashed."""
        if self.lease and fcntl.fcntl(self.fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK:
            return False  # a writer is waiting in open(): it must get the file back
        st = os.fstat(self.fd)
        return (st.st_size, st.st_mtime_ns) == self._seen

    def close(self) -> None:
        try:
            if self.lease:
                fcntl.fcntl(self.fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        finally:
            os.close(self.fd)

    def __enter__(self) -> "Taking":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
