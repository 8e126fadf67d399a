"""The deflate guard (imaging.deflate): ends on every stream, refuses bombs, truncated and corrupt
streams, ignores bytes after the end of the stream (issue 18.2)."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from pathlib import Path

import pytest

from hipcad.runtime.errors import BadInputError, InputTooLargeError
from hipcad.runtime.imaging.decode import decode
from hipcad.runtime.imaging.deflate import guard_deflate, inflate_prefix, inflated_size
from hipcad.runtime.imaging.limits import DEFAULT_LIMITS
from tests.fuzz import cases


def within(seconds: float, fn):
    """fn() on a thread; fails if it has not returned after ``seconds`` (the first guard spun)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised below
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def raw_stream(zeros: int) -> bytes:
    """A raw deflate stream of an explicit VR LE dataset: one OW element of ``zeros`` zero bytes."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [deflater.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, zeros))]
    block = bytes(1 << 20)
    for start in range(0, zeros, len(block)):
        out.append(deflater.compress(block[:min(len(block), zeros - start)]))
    return b"".join(out) + deflater.flush()


def test_the_zlib_behaviour_that_made_the_first_guard_spin():
    """After an output-limited turn, the end of the stream with bytes left over: CPython keeps the
    leftover as unconsumed_tail (as well as unused_data), so 'feed the tail until it is empty' spins."""
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = deflater.compress(bytes(20 << 20)) + deflater.flush() + b"TRAILING"
    inflater = zlib.decompressobj(-15)
    inflater.decompress(data, 1 << 24)
    assert inflater.unconsumed_tail and not inflater.eof
    inflater.decompress(inflater.unconsumed_tail, 1 << 24)
    assert inflater.eof and inflater.unused_data == b"TRAILING" and inflater.unconsumed_tail == b"TRAILING"


def test_the_issue_file_is_guarded_and_decodes(tmp_path):
    path = cases.make_deflate_trailing(tmp_path / "trailing.dcm")
    with open(path, "rb") as fp:
        within(20, lambda: guard_deflate(fp, DEFAULT_LIMITS))
    assert within(60, lambda: decode(path, min_side=1024)).original_shape == (2100, 4096)


@pytest.mark.parametrize("trailing", [0, 1, 7, 1_200_000])
@pytest.mark.parametrize("rows", [16, 2100, 4096])  # small, just over one 16 MiB turn, two turns
def test_bytes_after_the_stream_are_ignored(tmp_path, trailing, rows):
    path = cases.make_deflate_trailing(tmp_path / "f.dcm", rows=rows, cols=2048 if rows > 16 else 16, trailing=trailing)
    with open(path, "rb") as fp:
        within(20, lambda: guard_deflate(fp, DEFAULT_LIMITS))
        assert fp.tell() == 0


def test_a_bomb_is_refused_before_pydicom_inflates_it():
    with pytest.raises(InputTooLargeError, match="inflates to over 8 MiB"):
        inflated_size(io.BytesIO(raw_stream(40 << 20)), 8 << 20)


def test_a_bomb_file_is_refused_by_decode(tmp_path):
    path = cases.make_deflate_bomb(tmp_path / "bomb.dcm", size_mb=64)
    limits = type(DEFAULT_LIMITS)(max_file_bytes=32 << 20)
    with pytest.raises(InputTooLargeError, match="inflates to over 32 MiB"):
        within(60, lambda: decode(path, limits))


def test_truncated_and_corrupt_streams_are_refused():
    stream = raw_stream(1 << 20)
    with pytest.raises(BadInputError, match="truncated"):
        inflated_size(io.BytesIO(stream[: len(stream) // 2]), DEFAULT_LIMITS.max_file_bytes)
    corrupt = bytearray(stream)
    corrupt[0] = 0xFF  # an invalid block type
    with pytest.raises(BadInputError, match="corrupt deflated DICOM"):
        inflated_size(io.BytesIO(bytes(corrupt)), DEFAULT_LIMITS.max_file_bytes)


def test_a_stream_ending_exactly_at_the_end_of_a_turn():
    stream = raw_stream((1 << 24) - 12)  # 12 bytes of element header: exactly one 16 MiB turn
    assert inflated_size(io.BytesIO(stream + b"tail"), DEFAULT_LIMITS.max_file_bytes) == 1 << 24


def test_inflate_prefix_is_bounded():
    stream = raw_stream(64 << 20)
    prefix = inflate_prefix(io.BytesIO(stream), 4096)
    assert len(prefix) == 4096 and prefix[:4] == struct.pack("<HH", 0x7FE0, 0x0010)
    assert inflate_prefix(io.BytesIO(stream[:100]), 1 << 20)  # truncated: what could be inflated
    assert inflate_prefix(io.BytesIO(b"\xff" * 100), 4096) == b""  # corrupt: nothing


def test_pydicoms_deflated_file_and_a_plain_file():
    import pydicom.data

    folder = Path(pydicom.data.__file__).parent / "test_files"
    assert decode(folder / "image_dfl.dcm").pixels.shape == (512, 512)
    with open(folder / "CT_small.dcm", "rb") as fp:
        guard_deflate(fp, DEFAULT_LIMITS)
        assert fp.tell() == 0
