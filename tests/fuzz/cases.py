"""Hand-written reproductions of the decoder faults found in the field and by fuzzing (issue 18).

Each ``make_*`` writes one file, deterministically (fixed UIDs), from nothing but pydicom / Pillow /
numpy: the regression corpus (``corpus.json``) names them instead of keeping binary files.

    python -m tests.fuzz.cases NAME OUT [key=value ...]   e.g.  rle_panic out.dcm bits=16
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np


def base_dataset(rows: int = 64, cols: int = 64, bits: int = 8, name: str = "case"):
    """A small Secondary Capture image (explicit VR little endian) with random pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"hipcad-case-{name}-{rows}-{cols}-{bits}"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"hipcad-case-study-{name}"])
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    rng = np.random.default_rng(0)
    ds.PixelData = rng.integers(0, 200, size=(rows, cols), dtype=np.uint8 if bits == 8 else np.uint16).tobytes()
    return ds


def make_rle_panic(out: Path, bits: int = 16, rows: int = 8) -> Path:
    """Issue 18.1: a valid RLE Lossless image (64 x 64) whose Rows is then set below its data.
    pylibjpeg-rle 2.2 panics on 16-bit data (pyo3 PanicException, a BaseException)."""
    from pydicom.uid import RLELossless

    ds = base_dataset(bits=int(bits), name="rle-panic")
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    ds.Rows = int(rows)
    ds.save_as(out, enforce_file_format=True)
    return Path(out)


def make_deflate_trailing(out: Path, rows: int = 2100, cols: int = 4096, trailing: int = 4096) -> Path:
    """Issue 18.2: a Deflated image that inflates past one 16 MiB turn, with bytes after the end of
    the deflate stream. The first guard spun for ever on it; the image is valid and must decode."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = base_dataset(int(rows), int(cols), 16, name="deflate-trailing")
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = (np.add.outer(np.arange(int(rows)), np.arange(int(cols))) % 4096).astype(np.uint16).tobytes()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(out, enforce_file_format=True)
    with open(out, "ab") as fh:
        fh.write(b"\0" * int(trailing))
    return Path(out)


def make_deflate_bomb(out: Path, size_mb: int = 600) -> Path:
    """A Deflated DICOM whose dataset inflates to ``size_mb`` MiB of zeros (one private OB element)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["hipcad-case-deflate-bomb"])
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = io.BytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta)
    size = int(size_mb) << 20
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    with open(out, "wb") as fh:
        fh.write(head.getvalue())
        fh.write(deflater.compress(struct.pack("<HH2sHI", 0x0009, 0x0010, b"OB", 0, size)))
        block = bytes(1 << 20)
        for _ in range(int(size_mb)):
            fh.write(deflater.compress(block))
        fh.write(deflater.flush())
    return Path(out)


def make_jpegls_height0(out: Path) -> Path:
    """Found by fuzzing: a JPEG-LS image whose frame header declares 0 rows. pylibjpeg-libjpeg then
    allocates without bound, in C code that holds the GIL."""
    from pydicom.uid import JPEGLSLossless

    ds = base_dataset(40, 48, 16, name="jpegls-height0")
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = (np.frombuffer(ds.PixelData, np.uint16) & 0x0FFF).tobytes()
    ds.compress(JPEGLSLossless, generate_instance_uid=False)
    data = bytearray(ds.PixelData)
    sof = data.find(b"\xff\xf7")  # SOF55: FFF7, Lf(2), P(1), Y(2), X(2), Nf(1)
    data[sof + 5:sof + 7] = b"\x00\x00"
    ds.PixelData = bytes(data)
    ds.save_as(out, enforce_file_format=True)
    return Path(out)


def make_j2k_jp2box(out: Path, signature_tail: str = "0d0a870a") -> Path:
    """Found by atheris: a JPEG 2000 frame starting with a JP2 signature, then a box of length 0:
    pydicom 3.0's get_j2k_parameters loops for ever (``offset += 0``). pydicom takes a frame for JP2
    by the signature's first 8 bytes: ``signature_tail`` (hex) varies the last 4 (found again by
    atheris with 0d0a8708)."""
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import JPEG2000Lossless

    ds = base_dataset(40, 48, 16, name="j2k-jp2box")
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = (np.frombuffer(ds.PixelData, np.uint16) & 0x0FFF).tobytes()
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    signature = b"\x00\x00\x00\x0cjP  " + bytes.fromhex(signature_tail)
    ds.PixelData = encapsulate([signature + b"\x00\x00\x00\x00ftyp" + codestream])
    ds.save_as(out, enforce_file_format=True)
    return Path(out)


def make_sized(out: Path, width: int = 1, height: int = 100) -> Path:
    """An image of a degenerate size (issue 18.5): PNG, or DICOM when ``out`` ends in .dcm."""
    width, height = int(width), int(height)
    if str(out).endswith(".dcm"):
        base_dataset(height, width, name="sized").save_as(out, enforce_file_format=True)
        return Path(out)
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, size=(height, width), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(out, format="PNG")
    return Path(out)


MAKERS = {
    "rle_panic": make_rle_panic,
    "deflate_trailing": make_deflate_trailing,
    "deflate_bomb": make_deflate_bomb,
    "jpegls_height0": make_jpegls_height0,
    "j2k_jp2box": make_j2k_jp2box,
    "sized": make_sized,
}


def make(name: str, out: Path, **kwargs) -> Path:
    return MAKERS[name](Path(out), **kwargs)


if __name__ == "__main__":
    name, target, *pairs = sys.argv[1:]
    print(make(name, Path(target), **dict(pair.split("=", 1) for pair in pairs)))
