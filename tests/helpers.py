"""Helpers the tests share: the repository's paths, the installed CLI, radiograph-like images and
DICOM files, and a B4 that behaves like a trained one. Fixtures are in ``conftest.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]  # the repository root
SHARED = REPO.parent / "shared"
FAKES = REPO / "tests" / "fakes"  # the recording fakes of tensorrt and pycuda (see tests/fakes/README.md)


def run_cli(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed ``hipcad`` console script as a user would."""
    exe = Path(sys.executable).with_name("hipcad")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def fake_gpu_env(**extra: str) -> dict:
    """The environment of a subprocess (a CLI run) that imports the fake tensorrt and pycuda."""
    path = os.pathsep.join(filter(None, [str(FAKES), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


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


def make_bundle(path: Path, onnx: bytes = b"not really onnx", hw: int = 380, **manifest_extra):
    """A minimal bundle folder around ``onnx`` (manifest with its sha256), loaded. A real graph also
    gets its self-test (references from ONNX Runtime on the CPU) and the run's test signature, as a
    bundle made by ``hipcad export`` would; a stand-in graph stays unsigned (read without a trust check)."""
    import hashlib
    import json

    from hipcad.runtime.model.bundle import Bundle
    from hipcad.runtime.model.selftest import SELFTEST_FILE, reference_inputs

    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(onnx)
    manifest = {
        "format": "hipcad-bundle/1",
        "name": path.name,
        "input": {"shape": ["N", 1, hw, hw]},
        "class_names": ["no fracture", "fracture"],
        "onnx": {"file": "model.onnx", "sha256": hashlib.sha256(onnx).hexdigest()},
        "operating_points": {"default": {"threshold": 0.5}},
        "operating_point": "default",
        **manifest_extra,
    }
    real = onnx[:4] != b"not " and len(onnx) > 100
    if real:
        import onnxruntime as ort

        images = reference_inputs(2, (hw, hw), seed=7)
        logits, cam = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"]).run(["logits", "cam"], {"image": images})
        np.savez_compressed(path / SELFTEST_FILE, image=images, logits=logits, cam=cam)
        manifest["selftest"] = {"file": SELFTEST_FILE, "inputs": 2}
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    if real:
        from hipcad.runtime.tools.signing import sign_if_configured

        sign_if_configured(path)
    return Bundle(path)


def tiny_graph(hw: int = 64, channels: int = 8) -> bytes:
    """A tiny ONNX graph honouring the bundle contract (``image`` uint8 -> ``logits`` [N,2], ``cam``
    [N,h,w]) with the shape of the real export's tail (export/fused.py, as in the demo model): a
    convolution, SiLU as Sigmoid -> Mul (the feature map both heads share), ReduceMean -> Gemm for the
    logits, and Mul by W[1]/(h*w) -> ReduceSum over channels -> Relu for the heatmap. Opset 18."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    conv = rng.normal(0, 0.5, (channels, 1, 3, 3)).astype(np.float32)
    fc = rng.normal(0, 1, (2, channels)).astype(np.float32)
    side = (hw + 2 - 3) // 4 + 1
    cam_w = (fc[1] / (side * side)).reshape(1, channels, 1, 1).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (conv, "conv_w"), (np.zeros(channels, np.float32), "conv_b"), (fc, "fc_w"), (np.zeros(2, np.float32), "fc_b"),
        (cam_w, "div"), (np.array(255, np.float32), "scale"), (np.array([1], np.int64), "channel_axis"),
        (np.array([2, 3], np.int64), "spatial_axes")]]
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT, name="node_cast"),
        helper.make_node("Div", ["x", "scale"], ["xn"], name="node_div_255"),
        helper.make_node("Conv", ["xn", "conv_w", "conv_b"], ["c"], strides=[4, 4], pads=[1, 1, 1, 1], name="node_conv_head"),
        helper.make_node("Sigmoid", ["c"], ["sig"], name="node_sigmoid"),
        helper.make_node("Mul", ["c", "sig"], ["silu"], name="node_silu"),  # the shared feature map
        helper.make_node("ReduceMean", ["silu", "spatial_axes"], ["pooled"], keepdims=0, name="node_mean"),
        helper.make_node("Gemm", ["pooled", "fc_w", "fc_b"], ["logits"], transB=1, name="node_linear"),
        helper.make_node("Mul", ["silu", "div"], ["weighted"], name="node_cam_mul"),
        helper.make_node("ReduceSum", ["weighted", "channel_axis"], ["summed"], keepdims=0, name="node_cam_sum"),
        helper.make_node("Relu", ["summed"], ["cam"], name="node_cam_relu"),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 1, hw, hw])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", side, side])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


# the tiny graph's layers that compute only the heatmap (what the builder pins to FP32)
TINY_HEATMAP_LAYERS = {"div", "node_cam_mul", "node_cam_sum", "node_cam_relu"}
DEMO_BUNDLE = REPO / "runtime" / "model" / "demo"
# the same in the shipped demo model (TinyNet-C, exported by export/onnx_export.py)
DEMO_HEATMAP_LAYERS = {"div", "node_mul_1128", "node_sum_1", "node_relu"}


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
