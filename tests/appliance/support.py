"""Shared helpers and fixtures for the appliance tests (import them explicitly)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import free_port  # noqa: F401 - re-exported for the appliance tests

VENV_BIN = Path(sys.executable).parent
HIPCAD = VENV_BIN / "hipcad"


# Session fixtures imported into several test modules are instantiated once per module; this
# cache makes each of them once per run.
_ONCE: dict[str, object] = {}


def _once(key: str, make):
    if key not in _ONCE:
        _ONCE[key] = make()
    return _ONCE[key]


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory) -> Path:
    """A small, fast untrained bundle (EfficientNet-B0 at 128x128), exported once per run."""
    return _once("bundle", lambda: _export_small_bundle(tmp_path_factory.mktemp("appliance-bundle") / "b0"))


def _export_small_bundle(out: Path) -> Path:
    proc = subprocess.run([str(HIPCAD), "export", "--random-init", "--seed", "0", "--arch", "efficientnet_b0",
                           "--input-size", "128", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def radiographs(tmp_path_factory) -> list[Path]:
    """50 small synthetic AP pelvis radiographs, DICOM (several transfer syntaxes) and JPEG."""
    from hipcad.runtime.synth import generate

    def make() -> list[Path]:
        records = generate(tmp_path_factory.mktemp("radiographs"), 50, seed=7, size=(640, 480), formats="dicom,jpeg",
                           progress=False)
        return [r.path for r in records]

    return _once("radiographs", make)


TEST_READER = ("tester", "test reader password")


def write_config(tmp_path: Path, bundle: Path, **extra) -> Path:
    """A worker/kiosk config for a test: hot folder and data folder under ``tmp_path``; the kiosk open
    on loopback, and one reader account (TEST_READER) for what only a signed-in reader sees."""
    from hipcad.appliance.kiosk.accounts import add_user

    users = tmp_path / "kiosk-users"
    if not users.exists():
        add_user(users, *TEST_READER)
    values = {
        "hot_folder": str(tmp_path / "hot"),
        "data_dir": str(tmp_path / "data"),
        "model": str(bundle),
        "backend": "onnxruntime",
        "settle_s": 0.5,
        "rescan_interval_s": 2.0,
        "min_free_mb": 1,
        "kiosk_secret_key": "test-secret",
        "trusted_keys": os.environ["HIPCAD_TRUSTED_KEYS"],  # the test signing key (tests/conftest.py)
        "kiosk_allow_unauthenticated_loopback": True,
        "kiosk_users_file": str(users),
        **extra,
    }
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, (list, tuple)):
            lines.append(f"{key} = {json.dumps([str(v) for v in value])}")
        elif isinstance(value, (int, float)):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    path = tmp_path / "hipcad.toml"
    path.write_text("\n".join(lines) + "\n")
    (tmp_path / "hot").mkdir(exist_ok=True)
    return path


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class WorkerProcess:
    """``hipcad worker`` as a real subprocess; its log accumulates across restarts."""

    def __init__(self, config: Path, env: dict | None = None) -> None:
        self.config = config
        self.log = config.parent / "worker.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "hipcad.appliance.worker", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()


def drop(src: Path, hot: Path, name: str | None = None, chunks: int = 1, pause: float = 0.0) -> Path:
    """Copy ``src`` into the hot folder as a modality would: at once, or in ``chunks`` writes
    ``pause`` seconds apart with the file held open (a slow network copy)."""
    dst = hot / (name or src.name)
    data = src.read_bytes()
    if chunks <= 1:
        shutil.copyfile(src, dst)
        return dst
    step = -(-len(data) // chunks)
    with open(dst, "wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i:i + step])
            fh.flush()
            time.sleep(pause)
    return dst


def store_counts(config_path: Path) -> dict:
    from hipcad.appliance.config import load_config
    from hipcad.appliance.storage.store import Store

    config = load_config(config_path, environ={})
    if not config.db_path.exists():
        return {"queued": 0, "processing": 0, "done": 0, "failed": 0}
    store = Store(config.db_path)
    try:
        return store.status_counts()
    finally:
        store.close()


def finished(config_path: Path) -> int:
    counts = store_counts(config_path)
    return counts["done"] + counts["failed"]


@contextmanager
def worker_in_thread(config, **kwargs):
    """The Worker in a thread of this process (for tests that inject a backend or peek inside)."""
    from hipcad.appliance.worker.service import Worker

    worker = Worker(config, **kwargs)
    codes = []
    thread = threading.Thread(target=lambda: codes.append(worker.run()), daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop.set()
        thread.join(60)
        assert not thread.is_alive()
    assert codes == [0], codes


@contextmanager
def kiosk_server(config):
    """The kiosk app served as ``hipcad kiosk`` serves it (cheroot; HTTPS with kiosk_tls_cert) on a free
    loopback port, in a thread of this process."""
    from hipcad.appliance.kiosk import create_app, events
    from hipcad.appliance.kiosk.cli import make_server, url_of

    app = create_app(config)
    server = make_server(app, config, host="127.0.0.1", port=0)
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield url_of(config, server).rstrip("/")
    finally:
        events.shutdown(app)  # the news streams end first
        server.stop()


@contextmanager
def demo_process(tmp_path: Path, bundle: Path, count: int):
    """`hipcad demo` on ``bundle`` in a subprocess (kiosk on any free port, its lines on stdout);
    killed if the test leaves it running."""
    proc = subprocess.Popen([sys.executable, "-m", "hipcad.appliance.demo", "--model", str(bundle), "--port", "0",
                             "--count", str(count), "--interval", "0.2", "--dir", str(tmp_path / "demo")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- real DICOM peers (Debian packages dcmtk and orthanc), on loopback only ----------------------------
def kiosk_client(config_path: Path, signed_in: bool = True):
    """A Flask test client of the kiosk for a config file (environment ignored), signed in as
    TEST_READER (HTTP Basic) unless ``signed_in`` is false."""
    import base64

    from hipcad.appliance.config import load_config
    from hipcad.appliance.kiosk import create_app

    client = create_app(load_config(config_path, environ={})).test_client()
    if signed_in:
        token = base64.b64encode(":".join(TEST_READER).encode()).decode()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Basic {token}"
    return client


def need_binary(name: str, package: str) -> str:
    """The path of a peer's executable, or skip the test saying what to install.

    The virtualenv's own bin folder is left out of the search: pynetdicom installs Python
    look-alikes of dcmtk's tools (storescu, echoscu...) there, with other options."""
    venv_bin = os.path.dirname(sys.executable)
    search = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                             if d and os.path.realpath(d) != os.path.realpath(venv_bin))
    path = shutil.which(name, path=search)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {package})")
    return path


def dcmtk(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a dcmtk tool (storescu, echoscu, dcmcjpeg...)."""
    exe = need_binary(args[0], "dcmtk")
    return subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=timeout)


ORTHANC_LUA = """
function ReceivedInstanceFilter(dicom, origin, info)
  print('HIPCAD-TEST RECEIVED ' .. dicom.SOPInstanceUID .. ' FROM ' .. (origin['RemoteAet'] or '?'))
  return true
end
"""


class Orthanc:
    """A real Orthanc on loopback: storage in ``root``, HTTP API without authentication (loopback
    only: RemoteAccessAllowed false), DICOM only from the listed modalities on 127.0.0.1. A Lua
    filter logs every received C-STORE, duplicates included, so tests can count arrivals."""

    AE_TITLE = "ORTHANC"

    def __init__(self, root: Path, modalities: dict[str, int]) -> None:
        self.exe = need_binary("Orthanc", "orthanc")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        (self.root / "received.lua").write_text(ORTHANC_LUA)
        config = {
            "Name": "hipcad-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.AE_TITLE,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "WebDavEnabled": False,
            "Plugins": [],
            "LuaScripts": [str(self.root / "received.lua")],
            # Orthanc 1.10 has no bind address for DICOM: only these AE titles, from 127.0.0.1, may talk to it
            "DicomModalities": {name.lower(): [name, "127.0.0.1", port] for name, port in modalities.items()},
            "DicomCheckModalityHost": True,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": False,
            "StableAge": 1,
        }
        self.config = self.root / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=2))
        self.log = self.root / "orthanc.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> "Orthanc":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.exe, str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.root)
        wait_for(lambda: self._answers() or self.proc.poll() is not None, timeout, what="Orthanc to start")
        assert self.proc.poll() is None, self.log.read_text(errors="replace")[-2000:]
        return self

    def _answers(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def get(self, path: str):
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def post(self, path: str, body):
        import urllib.request

        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def study_instances(self, study_uid: str) -> list[dict]:
        """The instances Orthanc holds in that study, each with its main tags."""
        found = self.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        if not found:
            return []
        assert len(found) == 1, found
        return self.get(f"/studies/{found[0]}/instances")

    def instance_file(self, orthanc_id: str) -> bytes:
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/instances/{orthanc_id}/file", timeout=10) as response:
            return response.read()

    def received(self) -> dict[str, int]:
        """SOP Instance UID -> how many C-STOREs of it arrived (all runs of this Orthanc)."""
        counts: dict[str, int] = {}
        if self.log.exists():
            for line in self.log.read_text(errors="replace").splitlines():
                if "HIPCAD-TEST RECEIVED " in line:
                    uid = line.split("HIPCAD-TEST RECEIVED ", 1)[1].split(" ", 1)[0]
                    counts[uid] = counts.get(uid, 0) + 1
        return counts

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
