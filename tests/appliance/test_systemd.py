"""The systemd units: `systemd-analyze verify` passes, and the hardening the issue asks for is there."""

from __future__ import annotations

import configparser
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
    for name in UNITS:
        service = read_unit(name)["Service"]
        for key, value in {"User": "hipcad", "ProtectSystem": "strict", "NoNewPrivileges": "yes",
                           "PrivateTmp": "yes", "ProtectHome": "yes"}.items():
            assert service.get(key) == value, (name, key)
        assert service.get("ReadWritePaths"), name
        assert service.get("ExecStart", "").startswith(INSTALLED_BIN + "hipcad "), name
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
