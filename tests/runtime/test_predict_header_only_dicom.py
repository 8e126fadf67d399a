"""A DICOM file that holds only its header (preamble and file meta information, nothing after it):
``hipcad predict --json`` reports it as truncated, in words, without a traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import run_cli, write_dicom

MESSAGE = "the file is truncated or corrupt: nothing could be read after its file meta information"


def meta_end(data: bytes) -> int:
    """Where the file meta information ends: after (0002,0000) File Meta Information Group Length."""
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00" and data[136:138] == b"UL"
    return 144 + int.from_bytes(data[140:144], "little")


@pytest.fixture(scope="module")
def full_dicom(tmp_path_factory) -> bytes:
    path = write_dicom(tmp_path_factory.mktemp("header-only") / "full.dcm", np.full((480, 640), 100, np.uint8),
                       PatientOrientation=["L", "F"], BodyPartExamined="PELVIS", ViewPosition="AP")
    return path.read_bytes()


# 0: the file meta and nothing after it; 6: cut inside the first data element's tag and VR
@pytest.mark.parametrize("after_meta", [0, 6])
def test_a_dicom_file_with_only_its_header_is_reported_as_truncated(full_dicom, tmp_path, after_meta):
    header_only = tmp_path / "header-only.dcm"
    header_only.write_bytes(full_dicom[: meta_end(full_dicom) + after_meta])
    size = header_only.stat().st_size
    assert 200 < size < 400 and size < len(full_dicom) // 100  # preamble, DICM and the file meta group
    proc = run_cli("predict", "--json", "--backend", "onnxruntime", str(header_only), timeout=300)
    assert proc.returncode == 1  # not every input was read
    assert "Traceback" not in proc.stdout + proc.stderr
    (line,) = proc.stdout.splitlines()
    record = json.loads(line)
    assert record["input"] == str(header_only)
    assert record["ok"] is False and record["sides"] == [] and record["overlay"] is None
    assert record["error"] == MESSAGE
