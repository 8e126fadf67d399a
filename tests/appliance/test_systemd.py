"""The systemd units: `systemd-analyze verify` passes, and the hardening the issue asks for is there."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

UNITS_DIR = REPO / "systemd"
UNITS = ("hipcad-worker.service", "hipcad-kiosk.service", "hipcad-engine.service")
INSTALLED_BIN = "/opt/hipcad/venv/bin/"


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read_string((UNITS_DIR / name).read_text())
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path):
    venv_bin = str(Path(sys.executable).parent) + "/"
    assert Path(venv_bin, "hipcad").exists() and Path(venv_bin, "python").exists()
    for name in UNITS:  # the binaries named in Exec*= must exist for verify: point them at this venv
        (tmp_path / name).write_text((UNITS_DIR / name).read_text().replace(INSTALLED_BIN, venv_bin))
    proc = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in UNITS)],
                          capture_output=True, text=True, timeout=120)
    problems = [line for line in proc.stderr.splitlines()
                if "hipcad" in line and "Unknown user" not in line and "Failed to" not in line]
    assert proc.returncode == 0 and not problems, proc.stderr


def test_units_are_hardened_and_ordered():
    users = set()
    for name in UNITS:
        service = read_unit(name)["Service"]
        for key, value in {"Group": "hipcad", "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
                           "ProtectHome": "yes", "ProtectProc": "invisible", "SystemCallErrorNumber": "EPERM",
                           "IPAddressDeny": "any", "CapabilityBoundingSet": ""}.items():
            assert service.get(key) == value, (name, key)
        users.add(service["User"])
        assert "\nSystemCallFilter=@system-service\n" in (UNITS_DIR / name).read_text(), name  # repeated key: read the text
        for key in ("MemoryMax", "TasksMax", "ReadWritePaths"):
            assert service.get(key), (name, key)
        assert service.get("ExecStart", "").startswith(INSTALLED_BIN + "hipcad "), name
    assert users == {"hipcad-worker", "hipcad-kiosk", "hipcad-engine"}  # one user per service
    rw = {name: read_unit(name)["Service"]["ReadWritePaths"].split() for name in UNITS}
    assert rw["hipcad-kiosk.service"] == ["/var/lib/hipcad/data/db"]  # the kiosk writes the store only
    assert rw["hipcad-engine.service"] == ["/var/lib/hipcad/engines"]  # and only the engine writes plans
    assert not any(p.startswith(("/var/lib/hipcad/model", "/var/lib/hipcad/engines")) for p in rw["hipcad-worker.service"])
    kiosk = read_unit("hipcad-kiosk.service")["Service"]
    assert kiosk["PrivateDevices"] == "yes" and kiosk["ProcSubset"] == "pid"
    worker = read_unit("hipcad-worker.service")
    assert worker["Service"]["Type"] == "notify" and worker["Service"]["NotifyAccess"] == "main"
    assert worker["Service"]["WatchdogSec"] == "30"
    assert "hipcad-engine.service" in worker["Unit"]["Wants"] and "hipcad-engine.service" in worker["Unit"]["After"]
    for name in ("hipcad-worker.service", "hipcad-kiosk.service"):
        service = read_unit(name)["Service"]
        assert service["Restart"] == "on-failure"
        assert float(service["RestartSec"].rstrip("s")) >= 2
    engine = read_unit("hipcad-engine.service")["Service"]
    assert engine["Type"] == "oneshot" and "import tensorrt" in engine["ExecCondition"]
    assert "build-engine" in engine["ExecStart"]


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", UNITS)
def test_security_exposure_at_most_2(name):
    proc = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", name], cwd=UNITS_DIR,
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "offline" in proc.stderr:
        pytest.skip(f"this systemd-analyze has no --offline: {proc.stderr.strip()[:200]}")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout[-2000:] + proc.stderr
    assert float(match.group(1)) <= 2.0, proc.stdout


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None or shutil.which("systemd-sysusers") is None,
                    reason="systemd-tmpfiles / systemd-sysusers are not installed")
def test_sysusers_and_tmpfiles_make_the_users_and_folders(tmp_path):
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group"):
        (tmp_path / "etc" / name).write_text("")
    for tool, conf in (("systemd-sysusers", "hipcad.sysusers"), ("systemd-tmpfiles", "hipcad.tmpfiles")):
        args = [tool, f"--root={tmp_path}"] + (["--create"] if tool == "systemd-tmpfiles" else []) + [str(UNITS_DIR / conf)]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert all(f"hipcad-{who}:" in passwd for who in ("worker", "kiosk", "engine"))
    modes = {p: oct((tmp_path / p.lstrip("/")).stat().st_mode & 0o7777) for p in
             ("/var/lib/hipcad/data", "/var/lib/hipcad/data/db", "/var/lib/hipcad/engines", "/var/lib/hipcad/model")}
    assert modes == {"/var/lib/hipcad/data": "0o750", "/var/lib/hipcad/data/db": "0o2770",
                     "/var/lib/hipcad/engines": "0o750", "/var/lib/hipcad/model": "0o755"}


def test_ip_allow_dropin_from_the_config():
    from hipcad.appliance.config import load_config
    from hipcad.appliance.worker.cli import ip_allow_dropin

    config = load_config(None, environ={"HIPCAD_DICOM_PORT": "11112", "HIPCAD_DICOM_ALLOWED_HOSTS": "10.1.2.0/24,10.1.3.7",
                                        "HIPCAD_PACS_DESTINATIONS": "PACS@10.0.0.5:104"})
    text = ip_allow_dropin(config)
    assert text.splitlines()[1:] == ["[Service]", "IPAddressAllow=localhost", "IPAddressAllow=10.1.2.0/24",
                                     "IPAddressAllow=10.1.3.7", "IPAddressAllow=10.0.0.5"]
