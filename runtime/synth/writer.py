"""Writing phantoms as files (DICOM in several transfer syntaxes, JPEG, PNG) with their labels."""

from __future__ import annotations

import os
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hipcad.runtime.durable import atomic_write
from hipcad.runtime.evaluation.dataset import ImageRecord, SideLabel
from hipcad.runtime.synth.formats import FORMATS, SYNTHETIC_NOTE, UID_PREFIX
from hipcad.runtime.synth.render import Phantom, _window

_SOP_CLASSES = {
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "SC": "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
}
_MODELS = {"DX": "PHANTOM DR-1", "CR": "PHANTOM CR-2", "SC": "PHANTOM FILM DIGITIZER"}


def _uid(seed: int, index: int, what: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=["hipcad-synth", str(seed), str(index), what]))


def patient_id(index: int) -> str:
    return f"SYN{index:05d}"


def default_name(index: int, fmt: str) -> str:
    return f"syn_{index:05d}{FORMATS[fmt][1]}"


def _dicom_bytes(ph: Phantom, pixels: np.ndarray, fmt: str, mirrored: bool, vendor: dict | None = None) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    spec, vd = ph.spec, vendor or ph.vendor
    seed, index = spec.seed, spec.index
    kind = vd["kind"]
    ts = FORMATS[fmt][0]
    bits = vd["bits"]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASSES[kind]
    meta.MediaStorageSOPInstanceUID = _uid(seed, index, "sop")
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "HIPCAD_SYNTH"
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    day = date(2024, 1, 1) + timedelta(days=(seed * 7919 + index * 13) % 700)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = {"DX": ["DERIVED", "PRIMARY"], "CR": ["ORIGINAL", "PRIMARY"], "SC": ["DERIVED", "SECONDARY"]}[kind]
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = day.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{8 + index % 10:02d}{(index * 7) % 60:02d}00"
    ds.AccessionNumber = f"SYNACC{index:05d}"
    ds.Modality = "CR" if kind == "CR" else "DX"
    if kind == "SC":
        ds.ConversionType = "WSD"
    ds.Manufacturer = "hipcad synth"
    ds.ManufacturerModelName = _MODELS[kind]
    ds.InstitutionName = "SYNTHETIC"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC PELVIS AP"
    ds.SeriesDescription = "PELVIS AP (PHANTOM)"
    ds.PatientName = f"PHANTOM^{index}"
    ds.PatientID = patient_id(index)
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = f"{SYNTHETIC_NOTE} (hipcad synth)"
    ds.ImageComments = SYNTHETIC_NOTE
    ds.BodyPartExamined = "PELVIS"
    ds.ViewPosition = "AP"
    ds.StudyInstanceUID = _uid(seed, index, "study")
    ds.SeriesInstanceUID = _uid(seed, index, "series")
    ds.StudyID = f"{index % 100000}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["R", "F"] if mirrored else ["L", "F"]
    if kind == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BurnedInAnnotation = "NO"
    spacing = f"{spec.spacing:.6f}".rstrip("0")
    if kind in ("DX", "CR"):
        ds.ImagerPixelSpacing = [spacing, spacing]
    if kind in ("CR", "SC") or index % 2:
        ds.PixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if vd["mono1"] else "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if vd["voi_in_header"]:
        center, width = _window(vd)
        ds.WindowCenter = f"{center:.1f}"
        ds.WindowWidth = f"{width:.1f}"
        ds.WindowCenterWidthExplanation = "SYNTH"
    if vd["rescale"]:
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
    if fmt == "dcm-jpeg":
        buf = BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="JPEG", quality=vd["jpeg_quality"])
        frame = buf.getvalue()
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.LossyImageCompressionRatio = f"{pixels.nbytes / len(frame):.2f}"
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        meta.TransferSyntaxUID = ts
    elif fmt == "dcm-explicit":
        data = np.ascontiguousarray(pixels, dtype="<u2" if bits > 8 else np.uint8).tobytes()
        if len(data) % 2:
            data += b"\0"
        ds.PixelData = data
        ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    else:
        arr = np.ascontiguousarray(pixels)
        plugin = {"dcm-rle": "pylibjpeg", "dcm-jpegls": "pyjpegls", "dcm-j2k": "pylibjpeg"}[fmt]
        try:
            ds.compress(ts, arr, encoding_plugin=plugin, generate_instance_uid=False)
        except (RuntimeError, ValueError):  # that plugin is missing: let pydicom pick one
            ds.compress(ts, arr, generate_instance_uid=False)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_phantom(ph: Phantom, out_dir: str | os.PathLike, name: str | None = None, fmt: str | None = None) -> ImageRecord:
    """Write a phantom as a file in ``out_dir`` and return its dataset record.

    ``fmt`` (default: the phantom's own) is a key of :data:`FORMATS`. DICOM files drawn as
    mirrored are stored flipped left-right with PatientOrientation ``R\\F``; the boxes of the
    record are in the coordinates of the pixels as written.
    """
    fmt = fmt or ph.vendor["format"]
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    is_dicom = fmt.startswith("dcm-")
    out_dir = Path(out_dir)
    name = name or default_name(ph.spec.index, fmt)
    path = out_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = ph.pixels
    vendor = ph.vendor
    need8 = fmt in ("dcm-jpeg", "jpeg") or (fmt == "png" and vendor["bits"] <= 8)
    if (need8 and (pixels.dtype != np.uint8 or vendor["mono1"])) or (not is_dicom and vendor["mono1"]):
        # a format asked for explicitly that cannot hold these stored values: write what a viewer shows
        pixels = ph.display()
        vendor = dict(vendor, bits=8, mono1=False, stored_range=(0.0, 255.0), window_scale=1.0)
    mirrored = is_dicom and ph.vendor["mirrored"]
    width = pixels.shape[1]
    boxes, regions = dict(ph.boxes), {s: dict(r) for s, r in ph.regions.items()}
    if mirrored:
        pixels = pixels[:, ::-1]
        boxes = {s: b.mirrored(width) for s, b in boxes.items()}
        regions = {s: {k: b.mirrored(width) for k, b in r.items()} for s, r in regions.items()}
    if is_dicom:
        atomic_write(path, _dicom_bytes(ph, pixels, fmt, mirrored, vendor), durable=False)
    else:
        img = Image.fromarray(np.ascontiguousarray(pixels))
        if fmt == "jpeg":
            atomic_write(path, lambda fh: img.save(fh, format="JPEG", quality=ph.vendor["jpeg_quality"]), durable=False)
        else:
            atomic_write(path, lambda fh: img.save(fh, format="PNG", compress_level=1), durable=False)
    sides = {s: SideLabel(s in boxes, boxes.get(s)) for s in ("right", "left")}
    return ImageRecord(file=Path(name).as_posix(), path=path, patient_id=patient_id(ph.spec.index), sides=sides,
                       regions=regions, attributes=attributes(ph))


def attributes(ph: Phantom) -> dict[str, dict[str, str]]:
    """What the generator knows about a phantom, as labels.csv attribute columns per patient side:
    ``vendor`` (the simulated device look: its ManufacturerModelName) for the image, and
    ``fracture_type`` (neck, trochanteric) and ``displaced`` (yes, no) for the fractured side."""
    out = {side: {"vendor": _MODELS[ph.vendor["kind"]]} for side in ("right", "left")}
    fx = ph.fracture
    if fx is not None:
        out[fx.side].update(fracture_type=fx.kind, displaced="yes" if fx.params["displaced"] else "no")
    return out


def save_preview(ph: Phantom, path: str | os.PathLike, width: int = 1000, boxes: bool = True) -> Path:
    """A downscaled RGB PNG of a phantom (standard orientation) with its boxes drawn."""
    img = Image.fromarray(ph.display()).convert("RGB")
    if boxes:
        draw = ImageDraw.Draw(img)
        lw = max(2, img.width // 400)
        for regs in ph.regions.values():
            for b in regs.values():
                draw.rectangle(list(b), outline=(60, 200, 60), width=lw)
        for b in ph.boxes.values():
            draw.rectangle(list(b), outline=(255, 40, 40), width=lw)
    scale = width / img.width
    if scale < 1:
        img = img.resize((width, max(1, round(img.height * scale))), Image.LANCZOS)
    path = Path(path)
    img.save(path)
    return path


