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



def write_dicom(path: Path, pixels: np.ndarray, **tags) -> Path:
    """An uncompressed Digital X-Ray DICOM (explicit VR little endian) with ``tags`` set."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
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
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


# -- a real tritonserver (NVIDIA PyTriton's), through `hipcad serve` of the server venv -----------------
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def triton_env() -> Path:
    """The server venv (`make triton-env`): $HIPCAD_TRITON_ENV, else the repository's .venv-triton.

    `make test` sets HIPCAD_TRITON_ENV, and then a missing or broken server venv fails the tests;
    without it (pytest run by hand) a missing .venv-triton skips them, saying how to make it."""
    import os

    import pytest

    named = os.environ.get("HIPCAD_TRITON_ENV")
    env = Path(named) if named else REPO / ".venv-triton"
    if not (env / "bin" / "hipcad").exists():
        if named:
            pytest.fail(f"HIPCAD_TRITON_ENV={named} has no hipcad: run `make triton-env`")
        pytest.skip("no server venv for tritonserver: run `make triton-env` (made by `make test`)")
    return env


class Serve:
    """`hipcad serve BUNDLE` of the server venv as a subprocess on free loopback ports."""

    def __init__(self, bundle, workdir: Path, *args: str) -> None:
        self.bundle, self.workdir, self.args = str(bundle), Path(workdir), list(args)
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log = self.workdir / "serve.log"
        self.proc: subprocess.Popen | None = None
        self.server_pid: int | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 120.0) -> "Serve":
        import re
        import time

        self.workdir.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0  # the log accumulates across restarts
        exe = triton_env() / "bin" / "hipcad"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(exe), "serve", self.bundle, "--grpc-port", str(self.grpc_port),
                                          "--http-port", str(self.http_port), "--metrics-port", str(self.metrics_port),
                                          *self.args], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(rb"tritonserver pid (\d+), ready", self.log.read_bytes()[offset:])
            if match:
                self.server_pid = int(match[1])
                return self
            assert self.proc.poll() is None, self.text()[-3000:]
            time.sleep(0.1)
        raise AssertionError(f"hipcad serve not ready within {timeout:.0f} s:\n{self.text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the tritonserver itself (a crash), then wait for hipcad serve to notice."""
        import os
        import signal

        os.kill(self.server_pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> "Serve":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
