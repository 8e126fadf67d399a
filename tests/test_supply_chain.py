"""Supply chain: version floors above the known vulnerabilities, the device's hashed lock covering every
runtime and appliance dependency within those floors, pynetdicom pinned to what the DICOM guards
were written for, and the CycloneDX SBOM the build produces."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers import REPO

LOCK = REPO / "requirements" / "appliance.lock"
# package -> the first release without the advisories listed in the README ("Supply chain")
FIXED_IN = {"pillow": "12.3.0", "pydicom": "3.0.2", "cryptography": "46.0.7", "torch": "2.10.0", "onnx": "1.21.0",
            "flask": "3.1.1", "werkzeug": "3.0.6", "jinja2": "3.1.6"}


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements(*groups: str) -> dict[str, Requirement]:
    meta = project()
    reqs = [Requirement(r) for r in meta["dependencies"]]
    for group in groups:
        reqs += [Requirement(r) for r in meta["optional-dependencies"][group]]
    return {canonicalize_name(r.name): r for r in reqs}


def lock_pins() -> dict[str, tuple[Version, list[str]]]:
    pins = {}
    for block in re.split(r"\n(?=\S)", LOCK.read_text()):
        match = re.match(r"([A-Za-z0-9_.\-]+)==([^\s\\]+)", block)
        if match:
            pins[canonicalize_name(match[1])] = (Version(match[2]), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def test_floors_are_above_the_known_vulnerabilities():
    reqs = requirements("export", "appliance")
    for name, fixed in FIXED_IN.items():
        spec = reqs[name].specifier
        floors = [Version(s.version) for s in spec if s.operator in (">=", "==", "~=")]
        assert floors and max(floors) >= Version(fixed), f"{name} {spec} still admits releases before {fixed}"
    assert "waitress" not in reqs  # replaced by cheroot (TLS)


def test_pynetdicom_is_pinned_to_what_the_guards_replace():
    from hipcad.appliance.dicom.guard import PYNETDICOM_VERSION

    assert str(requirements("appliance")["pynetdicom"].specifier) == f"=={PYNETDICOM_VERSION}"


def test_lock_pins_every_dependency_with_hashes_within_the_floors():
    pins = lock_pins()
    assert pins and all(hashes for _, hashes in pins.values())
    for name, req in requirements("appliance").items():
        assert name in pins, f"{name} is missing from {LOCK.name}: run `make lock`"
        assert pins[name][0] in req.specifier, (name, str(pins[name][0]), str(req.specifier))
    for name, fixed in FIXED_IN.items():
        if name in pins:
            assert pins[name][0] >= Version(fixed), name
    assert "torch" not in pins and "onnx" not in pins  # a device has neither


def test_the_build_produces_a_cyclonedx_sbom_of_the_device_install(tmp_path):
    venv = Path(sys.executable).parents[1]  # the virtualenv running the tests (make setup installs cyclonedx-bom)
    if shutil.which("make") is None or not (venv / "bin" / "cyclonedx-py").exists():
        pytest.skip("make or cyclonedx-py (pip install cyclonedx-bom) is missing")
    proc = subprocess.run(["make", "-s", "-C", str(REPO), "sbom", f"SBOM_DIR={tmp_path}", f"VENV={venv}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bom = json.loads((tmp_path / "hipcad-appliance.cdx.json").read_text())
    assert bom["bomFormat"] == "CycloneDX" and bom["metadata"]["component"]["name"] == "hipcad"
    listed = {canonicalize_name(c["name"]): c for c in bom["components"]}
    for name in requirements("appliance"):
        assert name in listed, name
        component = listed[name]
        assert component["purl"] == f"pkg:pypi/{component['name']}@{component['version']}"
        assert any(ref.get("hashes") for ref in component.get("externalReferences", [])), name
