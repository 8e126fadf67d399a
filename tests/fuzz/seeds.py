"""The fuzzing seed corpus: small DICOM / JPEG / PNG files covering hipcad's decode paths.

Deterministic (fixed RNG seeds, fixed UIDs); nothing here is committed as data, this script
regenerates it -- byte for byte (the regression recipes in corpus.json check each seed's sha256).
DICOM: every transfer syntax hipcad accepts (pydicom's own encoders for RLE / Deflate / JPEG-LS /
JPEG 2000, dcmtk's dcmcjpeg for the JPEG processes when installed), 8/12/16/32-bit, signed,
MONOCHROME1, palette colour, RGB, YBR, multi-frame, Modality LUT, VOI LUT, windows, no preamble;
pydicom's own small test files. JPEG: baseline, progressive, grayscale, RGB, CMYK. PNG: L, LA, RGB,
P, I;16.

    python -m tests.fuzz.seeds OUT_DIR
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import uid as U
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

SMALL = (40, 48)  # rows, columns: decodes in about a millisecond


def pelvis(rows, cols, bits=12, seed=0):
    """A small smooth phantom with a few edges, in 0 .. 2**bits - 1."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    img = 0.3 + 0.4 * np.exp(-(((x - cols / 2) / (cols / 4)) ** 2 + ((y - rows / 2) / (rows / 3)) ** 2))
    img += 0.2 * ((np.abs(x - cols * 0.3) < cols * 0.08) | (np.abs(x - cols * 0.7) < cols * 0.08))
    img += rng.normal(0, 0.02, img.shape)
    top = (1 << bits) - 1
    return np.clip(img * top, 0, top)


def dataset(rows=SMALL[0], cols=SMALL[1], bits=16, stored=12, signed=0, photometric="MONOCHROME2", samples=1,
            frames=1, ts=U.ExplicitVRLittleEndian, seed=0):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    meta.MediaStorageSOPInstanceUID = U.generate_uid(entropy_srcs=[f"seed-{seed}-{rows}-{cols}-{bits}-{ts}"])
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = U.generate_uid(entropy_srcs=[f"study-{seed}"])
    ds.SeriesInstanceUID = U.generate_uid(entropy_srcs=[f"series-{seed}"])
    ds.PatientName, ds.PatientID = "FUZZ^SEED", "F0001"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "PELVIS", "AP"
    ds.PatientOrientation = ["L", "F"]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, signed
    if frames > 1:
        ds.NumberOfFrames = frames
    base = pelvis(rows, cols, min(stored, 15), seed)
    if signed:
        base = base - (1 << (stored - 1))
    dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32}[bits] if not signed else {8: np.int8, 16: np.int16, 32: np.int32}[bits]
    arr = base.astype(dtype)
    if samples == 3:
        arr = np.stack([arr, arr[::-1], arr[:, ::-1]], axis=-1)
    if frames > 1:
        arr = np.stack([arr] * frames)
    ds.PixelData = arr.tobytes()
    return ds


def save(ds, path: Path, preamble=True):
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        path.write_bytes(buf.getvalue()[132:])  # no preamble, no "DICM": starts with the (0002,0000) tag
    return path


def lut_item(entries, first, bits):
    item = Dataset()
    item.LUTDescriptor = [len(entries), first, bits]
    item.add_new(0x00283006, "OW", np.asarray(entries, dtype="<u2").tobytes())  # LUT Data
    return item


def dicom_seeds(out: Path) -> None:
    # native encodings
    save(dataset(), out / "explicit_le_16.dcm")
    save(dataset(bits=8, stored=8), out / "explicit_le_8.dcm")
    save(dataset(ts=U.ImplicitVRLittleEndian), out / "implicit_le_16.dcm")
    save(dataset(ts=U.ExplicitVRBigEndian), out / "explicit_be_16.dcm")
    save(dataset(ts=U.DeflatedExplicitVRLittleEndian), out / "deflated_16.dcm")
    save(dataset(signed=1), out / "signed_16.dcm")
    save(dataset(photometric="MONOCHROME1"), out / "mono1_16.dcm")
    save(dataset(bits=32, stored=32), out / "u32.dcm")
    save(dataset(bits=8, stored=8, samples=3, photometric="RGB"), out / "rgb_8.dcm")
    save(dataset(bits=8, stored=8, samples=3, photometric="YBR_FULL"), out / "ybr_full_8.dcm")
    save(dataset(frames=3), out / "multiframe_16.dcm")
    save(dataset(), out / "no_preamble_16.dcm", preamble=False)
    # bits allocated 1
    ds = dataset(bits=8, stored=8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = np.packbits((np.arange(SMALL[0] * SMALL[1]) % 3 == 0).astype(np.uint8), bitorder="little").tobytes()
    save(ds, out / "bits1.dcm")
    # palette colour
    ds = dataset(bits=8, stored=8, photometric="PALETTE COLOR")
    for c in ("Red", "Green", "Blue"):
        setattr(ds, f"{c}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{c}PaletteColorLookupTableData", (np.arange(256, dtype="<u2") * 257).tobytes())
    save(ds, out / "palette_8.dcm")
    # grayscale pipeline: rescale, windows, Modality LUT, VOI LUT
    ds = dataset()
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-100"
    ds.WindowCenter, ds.WindowWidth = ["1000", "800"], ["2000", "1600"]
    ds.VOILUTFunction = "SIGMOID"
    save(ds, out / "window_sigmoid.dcm")
    ds = dataset()
    ds.ModalityLUTSequence = Sequence([lut_item(np.arange(4096) // 2, 0, 16)])
    ds.ModalityLUTSequence[0].ModalityLUTType = "US"
    ds.VOILUTSequence = Sequence([lut_item(np.clip(np.arange(2048) * 2, 0, 4095), 0, 12)])
    save(ds, out / "modality_voi_lut.dcm")
    # compressed with pydicom's encoders
    for name, ts, kw in (
        ("rle_16.dcm", U.RLELossless, dict()),
        ("rle_8.dcm", U.RLELossless, dict(bits=8, stored=8)),
        ("rle_rgb_8.dcm", U.RLELossless, dict(bits=8, stored=8, samples=3, photometric="RGB")),
        ("jpegls_16.dcm", U.JPEGLSLossless, dict()),
        ("jpegls_near_8.dcm", U.JPEGLSNearLossless, dict(bits=8, stored=8)),
        ("j2k_lossless_16.dcm", U.JPEG2000Lossless, dict()),
        ("j2k_lossless_8.dcm", U.JPEG2000Lossless, dict(bits=8, stored=8)),
        ("j2k_16_64px.dcm", U.JPEG2000Lossless, dict(rows=64, cols=80)),  # reduced-resolution path
        ("j2k_lossy_16.dcm", U.JPEG2000, dict()),
    ):
        ds = dataset(**kw)
        try:
            opts = {"j2k_cr": [20]} if ts == U.JPEG2000 else {}
            if ts == U.JPEGLSNearLossless:
                opts = {"jls_error": 2}
            ds.compress(ts, generate_instance_uid=False, **opts)  # (a new random UID would change the seed)
            save(ds, out / name)
        except Exception as err:  # noqa: BLE001 - an encoder not installed: that seed is skipped
            print(f"skipped {name}: {err}", file=sys.stderr)
    # the JPEG processes, with dcmtk when present
    if shutil.which("dcmcjpeg"):
        src8 = save(dataset(bits=8, stored=8), out / ".src8.dcm")
        src12 = save(dataset(bits=16, stored=12), out / ".src12.dcm")
        for name, src, flags in (("jpeg_baseline_8.dcm", src8, ["+eb"]), ("jpeg_extended_12.dcm", src12, ["+ee"]),
                                 ("jpeg_lossless_sv1_16.dcm", src12, ["+e1"]), ("jpeg_lossless_p14_16.dcm", src12, ["+el"])):
            done = subprocess.run(["dcmcjpeg", "--uid-never", *flags, str(src), str(out / name)], capture_output=True)
            if done.returncode:
                print(f"skipped {name}: dcmcjpeg failed", file=sys.stderr)
        src8.unlink()
        src12.unlink()


def pydicom_test_files(out: Path, max_bytes: int = 60_000) -> None:
    import pydicom.data

    folder = Path(pydicom.data.__file__).parent / "test_files"
    for f in sorted(folder.glob("*.dcm")):
        if f.stat().st_size <= max_bytes:
            shutil.copyfile(f, out / f"pydicom_{f.name}")


def raster_seeds(out: Path) -> None:
    g = pelvis(*SMALL, bits=8).astype(np.uint8)
    rgb = np.stack([g, g[::-1], g[:, ::-1]], -1)
    Image.fromarray(g, "L").save(out / "gray.jpg", quality=90)
    Image.fromarray(g, "L").save(out / "gray_progressive.jpg", quality=80, progressive=True)
    Image.fromarray(rgb, "RGB").save(out / "rgb.jpg", quality=85, subsampling=2)
    Image.fromarray(rgb, "RGB").convert("CMYK").save(out / "cmyk.jpg", quality=85)
    big = pelvis(96, 128, bits=8).astype(np.uint8)
    Image.fromarray(big, "L").save(out / "gray_96x128.jpg", quality=90)  # draft() scaling with min_side
    Image.fromarray(g, "L").save(out / "gray.png")
    Image.fromarray(g, "L").convert("LA").save(out / "gray_alpha.png")
    Image.fromarray(rgb, "RGB").save(out / "rgb.png")
    Image.fromarray(rgb, "RGB").convert("P").save(out / "palette.png")
    Image.fromarray(pelvis(*SMALL, bits=16).astype(np.uint16)).save(out / "gray16.png")


def main(out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    dicom_seeds(folder)
    pydicom_test_files(folder)
    raster_seeds(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    print(f"{len(files)} seeds in {folder} ({sum(p.stat().st_size for p in files) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".cache/fuzz/seeds")
