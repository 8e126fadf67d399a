"""Helpers the tests share: the repository's paths, the installed CLI, radiograph-like images and
DICOM files, and a B4 that behaves like a trained one. Fixtures are in ``conftest.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]  # the repository root
SHARED = REPO.parent / "shared"


def run_cli(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed ``hipcad`` console script as a user would."""
    exe = Path(sys.executable).with_name("hipcad")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, **kwargs)


# the seeds of reference_inputs() used by the export's verification (1234) and self-test (7) and by tests
CALIBRATION_SEEDS = (1234, 7, 8, 21, 2024, 11, 99)


def calibrate_batchnorm(model, input_hw, normalise: bool = True):
    """Give a randomly initialised network a trained network's BatchNorm statistics, measured on
    radiograph-like inputs. Without this its activations collapse and every input gets the same
    logits, which would make any parity check vacuous. A random deep net is chaotic (activations
    explode on inputs unlike the calibration set), so the statistics are averaged over the
    reference-input seeds that the export's checks and these tests use."""
    import torch

    from hipcad.export.fused import GrayToNormalized
    from hipcad.runtime.model.selftest import reference_inputs

    batches = [GrayToNormalized()(torch.from_numpy(reference_inputs(4, input_hw, seed=seed)))
               for seed in CALIBRATION_SEEDS]
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
            if name.endswith(("bn3", "_bn2")):  # residual branches' last BN (timm, efficientnet_pytorch)
                with torch.no_grad():
                    m.weight.mul_(0.1)  # near-identity residual blocks, as trained nets start (zero-init)
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
        for m in model.modules():  # a near-constant channel would amplify float rounding hundredfold
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_var.clamp_(min=float(m.running_var.median()) * 0.1)
    return model.eval()


def trained_like_b4_state_dict(seed: int = 0) -> dict:
    """A timm EfficientNet-B4 state_dict that behaves like a trained one: calibrated BatchNorm and
    a classifier giving logits of a trained model's magnitude, different for different inputs."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model("efficientnet_b4", pretrained=False, num_classes=2)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 0.05)
        model.classifier.bias.copy_(torch.tensor([0.3, -0.3]))
    return calibrate_batchnorm(model, (380, 380)).state_dict()


def pelvis_like(rows: int = 700, cols: int = 1000, centre: float = 0.5, seed: int = 0) -> np.ndarray:
    """A crude symmetric 'pelvis' (two bright femoral blobs around a midline at ``centre``) with an
    asymmetric exposure gradient; enough to test geometry without the phantom generator."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    mid = centre * cols
    img = 50 + 30 * xx / cols + rng.normal(0, 3, (rows, cols))
    for dx in (-0.22 * cols, 0.22 * cols):
        img += 120 * np.exp(-(((xx - mid - dx) / (0.06 * cols)) ** 2 + ((yy - 0.55 * rows) / (0.15 * rows)) ** 2))
    img += 80 * np.exp(-(((xx - mid) / (0.15 * cols)) ** 2 + ((yy - 0.3 * rows) / (0.12 * rows)) ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)



def dicom_dataset(pixels: np.ndarray, bits: int | None = None, sop: str | None = None, **tags):
    """An uncompressed DICOM data set (explicit VR little endian; a Digital X-Ray unless ``sop``)
    holding ``pixels``: grey (rows x columns) or RGB (rows x columns x 3); signed for a signed dtype;
    ``bits`` stored (default: all the allocated ones); ``tags`` set last."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop or DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientName = "PHANTOM^TEST"
    ds.PatientID = "SYN0"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else pixels.shape[2]
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = "MONOCHROME2" if pixels.ndim == 2 else "RGB"
    ds.BitsAllocated = 8 * pixels.dtype.itemsize
    ds.BitsStored = bits or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def write_dicom(path: Path, pixels: np.ndarray, **tags) -> Path:
    """An uncompressed Digital X-Ray DICOM (explicit VR little endian) with ``tags`` set."""
    dicom_dataset(pixels, **tags).save_as(path, enforce_file_format=True)
    return path


def phantom(seed: int, index: int = 0, size: tuple[int, int] | None = (1000, 800), **kwargs):
    """A synthetic AP pelvis (``hipcad.runtime.synth``) of ``size`` (width, height): its display
    pixels (8-bit, bone bright) and the phantom (true midline, boxes...)."""
    from hipcad.runtime.synth import make_phantom

    ph = make_phantom(seed, index, size=size, **kwargs)
    return np.ascontiguousarray(ph.display()), ph
