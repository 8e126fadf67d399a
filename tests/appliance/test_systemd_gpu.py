"""The GPU drop-ins (systemd/gpu for NVIDIA GPUs, systemd/jetson for Jetson) pass `systemd-analyze verify`
together with the base units, are really loaded with them, and give the services the NVIDIA device nodes.
Not run under a live systemd, nor on a GPU box."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SYSTEMD = REPO / "systemd"
BASE = ("hipcad-worker.service", "hipcad-kiosk.service", "hipcad-engine.service")
GPU_UNITS = ("hipcad-worker.service", "hipcad-engine.service")
INSTALLED_BIN = "/opt/hipcad/venv/bin/"
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


# what a more hardened base unit may add (the drop-ins must still give the GPU)
HARDER = "PrivateDevices=yes\nDevicePolicy=strict\nProcSubset=pid\nProtectProc=invisible\n"


def install(tmp_path: Path, flavour: str, harder: bool = False) -> Path:
    """/etc/systemd/system as the README's installation leaves it: base units plus one flavour's files.
    Exec paths point at this venv (verify checks that the binaries exist); nvidia-modprobe, absent
    here, at /bin/true. ``harder``: the base units' [Service] get HARDER."""
    root = tmp_path / "system"
    root.mkdir()
    venv_bin = str(Path(sys.executable).parent) + "/"
    for name in BASE:
        text = (SYSTEMD / name).read_text().replace(INSTALLED_BIN, venv_bin)
        (root / name).write_text(text.replace("\n[Install]", f"\n{HARDER}\n[Install]") if harder else text)
    for path in (SYSTEMD / flavour).rglob("*"):
        if path.is_file():
            target = root / path.relative_to(SYSTEMD / flavour)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text().replace("/usr/bin/nvidia-modprobe ", "/bin/true "))
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess:
    # the unit directory on the search path, so that <unit>.d/ drop-ins load as from /etc/systemd/system
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{root}:"}
    return subprocess.run(["systemd-analyze", "verify", *(str(root / u) for u in units)],
                          capture_output=True, text=True, timeout=120, env=env)


def problems(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines()
            if ("hipcad" in line or "nvidia" in line or "jetson" in line)
            and "Unknown user" not in line and "Unknown group" not in line and "Failed to" not in line]


def read(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read_string(path.read_text())
    return parser


@needs_analyze
@pytest.mark.parametrize("flavour, units", [
    ("gpu", (*BASE, "hipcad-nvidia-devices.service")),
    ("jetson", BASE),
])
def test_drop_ins_verify_with_the_base_units(tmp_path, flavour, units):
    root = install(tmp_path, flavour)
    proc = verify(root, *units)
    assert proc.returncode == 0 and not problems(proc), proc.stderr


@needs_analyze
@pytest.mark.parametrize("flavour", ["gpu", "jetson"])
def test_the_drop_ins_are_really_loaded_by_verify(tmp_path, flavour):
    """A key systemd does not know, added to each drop-in, is reported: verify read the drop-ins."""
    root = install(tmp_path, flavour)
    for conf in root.rglob("*.conf"):
        conf.write_text(conf.read_text() + "NotASystemdKey=1\n")
    stderr = verify(root, *BASE).stderr
    for conf in root.rglob("*.conf"):
        assert f"{conf}:" in stderr and "NotASystemdKey" in stderr, stderr


@needs_analyze
@pytest.mark.parametrize("flavour, nodes", [
    ("gpu", ("/dev/nvidiactl:rw", "/dev/nvidia0:rw", "/dev/nvidia-uvm:rw", "char-nvidia*:rw")),
    ("jetson", ("/dev/nvmap:rw", "/dev/nvhost-ctrl-gpu:rw", "char-nvgpu*:rw")),
])
@pytest.mark.parametrize("harder", [False, True], ids=["base", "harder-base"])
def test_gpu_services_get_the_device_nodes_in_the_merged_unit(tmp_path, flavour, nodes, harder):
    """`systemd-analyze security --offline` evaluates each unit with its drop-ins applied, also over a
    base unit with PrivateDevices=yes and a narrowed /proc."""
    root = install(tmp_path, flavour, harder)
    assert verify(root, *BASE).returncode == 0
    for unit in GPU_UNITS:
        proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(root / unit)],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "SYSTEMD_UNIT_PATH": f"{root}:"})
        lines = proc.stdout.splitlines()
        acl = next(line for line in lines if "DeviceAllow=" in line)
        for node in nodes:
            assert node in acl, (unit, acl)
        assert any(line.startswith("✗ PrivateDevices=") for line in lines), (unit, proc.stdout)
    kiosk = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(root / "hipcad-kiosk.service")],
                           capture_output=True, text=True, timeout=120).stdout
    assert "nvidia" not in kiosk and "nvmap" not in kiosk  # the kiosk needs no GPU and gets none


def test_gpu_drop_ins_order_module_loading_first_and_turn_tf32_off():
    devices = read(SYSTEMD / "gpu" / "hipcad-nvidia-devices.service")
    assert devices["Service"]["Type"] == "oneshot" and devices["Service"]["RemainAfterExit"] == "yes"
    assert "hipcad-worker.service" in devices["Unit"]["Before"] and "hipcad-engine.service" in devices["Unit"]["Before"]
    starts = [line.split("=", 1)[1] for line in (SYSTEMD / "gpu" / "hipcad-nvidia-devices.service").read_text().splitlines()
              if line.startswith("ExecStart=")]
    assert starts == ["/usr/bin/nvidia-modprobe -c 255 -c 0", "/usr/bin/nvidia-modprobe -u -c 0"]
    for unit in GPU_UNITS:
        conf = read(SYSTEMD / "gpu" / f"{unit}.d" / "nvidia.conf")
        assert conf["Unit"]["Wants"] == "hipcad-nvidia-devices.service"
        assert "hipcad-nvidia-devices.service" in conf["Unit"]["After"]
        assert conf["Service"]["PrivateDevices"] == "no" and conf["Service"]["DevicePolicy"] == "closed"
        assert conf["Service"]["Environment"] == "NVIDIA_TF32_OVERRIDE=0"
        jetson = read(SYSTEMD / "jetson" / f"{unit}.d" / "jetson.conf")
        assert jetson["Service"]["Environment"] == "NVIDIA_TF32_OVERRIDE=0" and jetson["Service"]["PrivateDevices"] == "no"
