"""`hipcad serve`: the real tritonserver of the server venv; its set-up check, start, stop, and
what happens when it cannot start or is killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from hipcad.runtime.model.bundle import DEFAULT_BUNDLE
from tests.helpers import Serve, run_cli, triton_env

pytestmark = pytest.mark.triton


def gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_check_names_what_is_missing():
    proc = subprocess.run([str(triton_env() / "bin" / "hipcad"), "serve", "--check"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tritonserver of nvidia-pytriton 0.7" in proc.stdout and "numpy 1." in proc.stdout
    assert "libpython3" in proc.stdout
    # the test venv has numpy 2 and no nvidia-pytriton: said so, exit status 2
    proc = run_cli("serve", "--check")
    assert proc.returncode == 2 and "nvidia-pytriton (which ships tritonserver) is not installed" in proc.stderr
    proc = run_cli("serve", "--check", "--server-env", str(triton_env()))
    assert proc.returncode == 0, proc.stderr


def test_sigterm_stops_it_and_a_killed_launcher_leaves_no_server(tmp_path):
    serve = Serve(DEFAULT_BUNDLE, tmp_path / "a", "--ort-threads", "1").start()
    assert "serving demo" in serve.text() and f"gRPC 127.0.0.1:{serve.grpc_port}" in serve.text()
    assert serve.stop() == 0 and "hipcad serve: stopped" in serve.text()
    assert gone(serve.server_pid)
    serve = Serve(DEFAULT_BUNDLE, tmp_path / "b", "--ort-threads", "1").start()
    serve.proc.send_signal(signal.SIGKILL)  # the launcher dies: the server gets SIGTERM (parent-death signal)
    serve.proc.wait()
    assert gone(serve.server_pid)


def test_a_taken_port_is_refused_before_starting(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        proc = subprocess.run([str(triton_env() / "bin" / "hipcad"), "serve", "--grpc-port", str(port), "--http-port",
                               "0", "--metrics-port", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr
