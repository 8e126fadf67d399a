"""The ``tritonserver`` of NVIDIA's PyTriton wheel (``nvidia-pytriton``), run directly on a model
repository with its Python backend - the CPU server of ``hipcad serve``.

Where things are in the wheel (0.7.0, tritonserver 2.51)::

    site-packages/pytriton/tritonserver/bin/tritonserver
    site-packages/pytriton/tritonserver/backends/python/{libtriton_python.so, triton_python_backend_utils.py}
    site-packages/pytriton/tritonserver/python_backend_stubs/<3.X>/triton_python_backend_stub
    site-packages/nvidia_pytriton.libs/        libtritonserver, CUDA runtime, OpenSSL... (LD_LIBRARY_PATH)

Triton wants one ``backends/python/`` folder with the library, the utilities and a stub named
exactly ``triton_python_backend_stub``: :meth:`TritonServer.start` makes one of symbolic links.

The Python environment the stub embeds. The stub links ``libpython3.X.so.1.0`` through the dynamic
loader and takes its ``sys.prefix`` from the first ``python3`` on ``PATH``, so the server
environment's ``bin/`` goes first on ``PATH`` and its base interpreter's ``LIBDIR`` on
``LD_LIBRARY_PATH``. Without the latter, a venv made from another build of the same Python (a pyenv
3.11.7 beside Debian's 3.11.2) gets the stdlib of one and the C runtime of the other, and models fail
to load with ``'_thread.RLock' object has no attribute '_recursion_count'``. The environment also
needs numpy<2 (under numpy 2 this Python backend returns empty outputs without an error) and
onnxruntime: ``pip install 'hipcad[serve]'`` in a venv of its own.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hipcad.runtime.errors import HipcadError

# run by the server environment's interpreter: where its pieces are, without importing pytriton
_PROBE = r"""
import importlib.metadata as md, importlib.util as iu, json, os, sys, sysconfig
spec = iu.find_spec("pytriton")
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
print(json.dumps({
    "python": sys.executable, "bin": os.path.dirname(sys.executable), "version": "%d.%d" % sys.version_info[:2],
    "pytriton": list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else None,
    "libpython": os.path.join(libdir, soname) if libdir and soname else None,
    "numpy": version("numpy"), "onnxruntime": version("onnxruntime"), "nvidia-pytriton": version("nvidia-pytriton"),
}))
"""


class ServerSetupError(HipcadError):
    """The tritonserver installation or its Python environment cannot serve (what to install is said)."""


@dataclass(frozen=True)
class Installation:
    """A Python environment with nvidia-pytriton: the server binary and the stub's interpreter."""

    python: str
    bin: str
    version: str
    pytriton: Path
    libpython: Path | None
    packages: dict

    @property
    def dist(self) -> Path:
        return self.pytriton / "tritonserver"

    @property
    def executable(self) -> Path:
        return self.dist / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.pytriton.parent / "nvidia_pytriton.libs"

    def backend_files(self) -> dict[str, Path]:
        """Triton's name for each file of the Python backend -> where the wheel has it."""
        python = self.dist / "backends" / "python"
        return {"libtriton_python.so": python / "libtriton_python.so",
                "triton_python_backend_utils.py": python / "triton_python_backend_utils.py",
                "triton_python_backend_stub": self.dist / "python_backend_stubs" / self.version / "triton_python_backend_stub"}

    def environment(self) -> dict:
        env = dict(os.environ)
        libdir = str(self.libpython.parent) if self.libpython else None
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.libs), libdir, env.get("LD_LIBRARY_PATH")]))
        env["PATH"] = os.pathsep.join(filter(None, [self.bin, env.get("PATH")]))
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)
        return env

    def problems(self) -> list[str]:
        """What keeps this installation from serving a hipcad model (empty: nothing)."""
        found = []
        if not os.access(self.executable, os.X_OK):
            found.append(f"{self.executable} is missing or not executable")
        for name, path in self.backend_files().items():
            if not path.is_file():
                found.append(f"{name}: {path} is missing (no Python backend stub for Python {self.version}?)")
        if self.libpython is None or not self.libpython.is_file():
            found.append(f"the Python of {self.python} has no shared libpython{self.version}.so (the backend's stub links "
                         f"it): make the server venv from the system's python{self.version} (Debian: package "
                         f"libpython{self.version})")
        numpy = self.packages.get("numpy")
        if numpy is None or int(numpy.split(".")[0]) >= 2:
            found.append(f"numpy {numpy or 'is missing'}: the Python backend needs numpy<2 (pip install 'numpy<2')")
        if self.packages.get("onnxruntime") is None:
            found.append("onnxruntime is not installed in the server's environment")
        stub = self.backend_files()["triton_python_backend_stub"]
        if not found and stub.is_file():
            ldd = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, env=self.environment())
            missing = [line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line]
            if missing:
                found.append(f"the backend's stub cannot load {', '.join(missing)}")
        return found


def find_installation(env: str | Path | None = None) -> Installation:
    """The installation in the venv ``env`` (its folder), else in this interpreter's environment."""
    python = str(Path(env) / "bin" / "python") if env else sys.executable
    if env and not Path(python).exists():
        raise ServerSetupError(f"{env} is not a Python virtual environment (no bin/python)")
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60)
        info = json.loads(proc.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        raise ServerSetupError(f"cannot ask {python} about its packages: {err}") from err
    if not info["pytriton"]:
        raise ServerSetupError(f"nvidia-pytriton (which ships tritonserver) is not installed in {Path(info['python']).parent.parent}: "
                               "make a server venv with `make triton-env`, or `python3 -m venv DIR && DIR/bin/pip install "
                               "'hipcad[serve]'`, and run its hipcad (or pass --server-env DIR)")
    packages = {k: info[k] for k in ("numpy", "onnxruntime", "nvidia-pytriton")}
    return Installation(info["python"], info["bin"], info["version"], Path(info["pytriton"]),
                        Path(info["libpython"]) if info["libpython"] else None, packages)


@dataclass
class Listen:
    """Where the server listens. gRPC on ``bind``; HTTP and metrics on ``http_bind`` (tritonserver
    has no HTTPS: with gRPC TLS they stay on loopback unless told otherwise)."""

    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    bind: str = "127.0.0.1"
    http_bind: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None

    @property
    def http_address(self) -> str:
        return self.http_bind or ("127.0.0.1" if self.tls_cert else self.bind)

    def ready_url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.http_address, self.http_address)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.http_port}/v2/health/ready"

    def arguments(self) -> list[str]:
        args = [f"--grpc-address={self.bind}", f"--grpc-port={self.grpc_port}",
                f"--http-address={self.http_address}", f"--http-port={self.http_port}",
                f"--metrics-address={self.http_address}", f"--metrics-port={self.metrics_port}"]
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ServerSetupError("gRPC TLS needs both the server certificate and its key")
        if self.tls_client_ca and not self.tls_cert:
            raise ServerSetupError("mutual TLS (a client CA) needs the server certificate and key too")
        if self.tls_cert:
            for path in filter(None, (self.tls_cert, self.tls_key, self.tls_client_ca)):
                if not Path(path).is_file():
                    raise ServerSetupError(f"TLS file {path} does not exist")
            args += ["--grpc-use-ssl=true", f"--grpc-server-cert={Path(self.tls_cert).resolve()}",
                     f"--grpc-server-key={Path(self.tls_key).resolve()}"]
            if self.tls_client_ca:
                args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={Path(self.tls_client_ca).resolve()}"]
        return args

    def check_free(self) -> None:
        """Refuse to start on a taken port: waiting for "ready" would otherwise find another server."""
        for address, port in ((self.bind, self.grpc_port), (self.http_address, self.http_port),
                              (self.http_address, self.metrics_port)):
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((address, port))
                except OSError as err:
                    raise ServerSetupError(f"cannot listen on {address}:{port}: {err.strerror or err}") from err


def _child_setup():
    """For the child between fork and exec: its own process group (Ctrl-C in a terminal reaches
    ``hipcad serve``, which stops the server in order) and SIGTERM when its parent dies (Linux
    PR_SET_PDEATHSIG: a killed ``hipcad serve`` leaves no server behind)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        prctl = None

    def setup() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(1, signal.SIGTERM)

    return setup


class TritonServer:
    """One tritonserver process on a model repository."""

    def __init__(self, installation: Installation, repository: Path, backends: Path, listen: Listen,
                 log_verbose: int = 0) -> None:
        self.installation, self.repository, self.backends = installation, Path(repository), Path(backends)
        self.listen, self.log_verbose = listen, log_verbose
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [str(self.installation.executable), f"--model-repository={self.repository.resolve()}",
                f"--backend-directory={self.backends.resolve()}", *self.listen.arguments(),
                "--strict-readiness=true", "--exit-on-error=true", "--disable-auto-complete-config",
                f"--log-verbose={self.log_verbose}"]

    def link_backend(self) -> None:
        python = self.backends / "python"
        python.mkdir(parents=True, exist_ok=True)
        for name, target in self.installation.backend_files().items():
            link = python / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)

    def start(self, stdout=None) -> "TritonServer":
        command = self.command()  # checks the TLS options first
        self.listen.check_free()
        self.link_backend()
        self.proc = subprocess.Popen(command, env=self.installation.environment(), stdout=stdout,
                                     stderr=subprocess.STDOUT if stdout is not None else None,
                                     preexec_fn=_child_setup())
        return self

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds until Triton answers ready (strict: every model loaded); raises if it exits first."""
        start = time.monotonic()
        url = self.listen.ready_url()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise ServerSetupError(f"tritonserver exited with status {self.proc.returncode} before it was ready "
                                       "(its log says why)")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - start
            except OSError:
                pass
            time.sleep(0.1)
        raise ServerSetupError(f"tritonserver was not ready within {timeout:.0f} s")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (Triton finishes the requests in flight and unloads the models), then SIGKILL."""
        if self.proc is None:
            return 0
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
