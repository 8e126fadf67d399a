"""The appliance bench's fresh copies: a new identity for the box (bytes, SOP Instance UID), the
same pixels for the decoder."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from hipcad.runtime.imaging.decode import decode
from hipcad.runtime.tools.bench_drops import Source, deliver


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from hipcad.runtime.synth import generate

    folder = tmp_path_factory.mktemp("drops")
    records = generate(folder, 2, seed=5, size=(320, 256), formats="dicom,jpeg", progress=False)
    png = folder / "plain.png"
    Image.fromarray((np.arange(256 * 320) % 251).astype(np.uint8).reshape(256, 320)).save(png)
    return [r.path for r in records] + [png]


def test_each_copy_is_new_to_the_box_and_the_same_image(sources, tmp_path):
    for path in sources:
        source = Source(path.stem, path)
        first, second = source.copy(1), source.copy(2)
        assert first != second and first != source.data
        a, b = tmp_path / f"a{source.suffix}", tmp_path / f"b{source.suffix}"
        a.write_bytes(first)
        b.write_bytes(second)
        original = decode(path).pixels
        assert np.array_equal(decode(a).pixels, original) and np.array_equal(decode(b).pixels, original)
        if source.format == "dicom":
            uids = {pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID for data in (first, second)}
            assert len(uids) == 2 and pydicom.dcmread(path).SOPInstanceUID not in uids


def test_deliveries_leave_complete_files_under_their_own_names(sources, tmp_path):
    source = Source("kind", sources[-1])
    complete, name, extra = deliver("rename", source, 7, tmp_path, None)
    assert (tmp_path / name).is_file() and not list(tmp_path.glob(".*")) and extra == {}
    complete2, name2, _ = deliver("close", source, 8, tmp_path, None)
    assert complete2 >= complete and Image.open(tmp_path / name2).size == (320, 256)
    with pytest.raises(ValueError, match="not a DICOM, JPEG or PNG"):
        (tmp_path / "x.txt").write_text("hello")
        Source("x", tmp_path / "x.txt")
