"""One decoding process of :mod:`.isolation`, seen from the parent: started, its "ready" awaited,
killed, its end described.

Started by fork+exec of this interpreter (:mod:`.isolation_child` then imports what it needs), or --
only from the main thread of a process that runs no other thread, where a fork is safe -- by a
plain fork that inherits the modules already imported (``hipcad predict``'s first process: no
second interpreter start competing with the model load).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from hipcad.runtime.errors import DecoderUnavailableError

_CHILD = "from hipcad.runtime.imaging.isolation_child import main; main()"


def describe_exit(code: int | None) -> str:
    if code is None:
        return "the decoder stopped answering"
    if code < 0:
        what = {signal.SIGSEGV: "crashed", signal.SIGBUS: "crashed", signal.SIGILL: "crashed", signal.SIGFPE: "crashed",
                signal.SIGABRT: "aborted", signal.SIGKILL: "was killed (out of memory?)",
                signal.SIGXCPU: "used up its CPU-time limit"}.get(-code, "was stopped")
        try:
            name = f", {signal.Signals(-code).name}"
        except ValueError:
            name = ""
        return f"the decoder {what} (signal {-code}{name})"
    return f"the decoder exited unexpectedly (status {code})"


def fork_is_safe() -> bool:
    """A plain fork copies only the calling thread: safe where it is the main and only thread."""
    return threading.current_thread() is threading.main_thread() and threading.active_count() == 1


class _Forked:
    """The few Popen methods the pool uses, for a process made by os.fork()."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


class Child:
    """One decoding process and the parent's end of its socket. :meth:`ready` waits for its hello."""

    START_TIMEOUT_S = 60.0

    def __init__(self, limits, decoder: str | None, warm: str, fork: bool = False) -> None:
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        args = (theirs.fileno(), os.getpid(), limits.memory_mb, limits.cpu_s or 0, limits.recycle_mb, warm, decoder)
        try:
            self.popen = self._fork(ours, theirs, args) if fork else self._exec(theirs, args)
        except OSError as err:
            ours.close()
            raise DecoderUnavailableError(f"the decoding process could not be started: {err.strerror or err}") from err
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.pid = self.popen.pid
        self.files = 0

    @staticmethod
    def _exec(theirs: socket.socket, args: tuple) -> subprocess.Popen:
        env = dict(os.environ)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
        # what this process imports (its '' is the working directory it started in), nothing else
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        flags = ["-P"] if sys.version_info >= (3, 11) else []
        argv = [str(a) for a in args if a is not None]
        return subprocess.Popen([sys.executable, *flags, "-c", _CHILD, *argv], pass_fds=(theirs.fileno(),),
                                stdin=subprocess.DEVNULL, env=env, close_fds=True)

    @staticmethod
    def _fork(ours: socket.socket, theirs: socket.socket, args: tuple) -> _Forked:
        pid = os.fork()
        if pid:
            return _Forked(pid)
        code = 1
        try:  # the child: only its end of the socket stays open (and stdio, until silenced)
            ours.close()
            for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
                if fd > 2 and fd != theirs.fileno():
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            from hipcad.runtime.imaging.isolation_child import run

            run(*args)
            code = 0
        finally:
            os._exit(code)

    def ready(self) -> "Child":
        try:
            if self.conn.poll(self.START_TIMEOUT_S) and "ready" in json.loads(self.conn.recv_bytes(1024)):
                return self
        except (EOFError, OSError, ValueError):
            pass
        code = self.exitcode(1.0)
        self.kill()
        raise DecoderUnavailableError(f"the decoding process could not be started ({describe_exit(code)})")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def exitcode(self, wait: float = 2.0) -> int | None:
        try:
            return self.popen.wait(wait)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        try:
            self.popen.kill()
            self.popen.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.conn.close()
