"""Model bundles: a folder with ``manifest.json`` and ``model.onnx`` (the fixed interface of the
project's design notes: the manifest says what the model is, how it was made and how far to trust it)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from functools import cached_property
from pathlib import Path

from hipcad.runtime.errors import BundleError
from hipcad.runtime.inference.verdict import UNCALIBRATED, Calibration
from hipcad.runtime.model.notice import SafetyNotice, safety_notice

MANIFEST = "manifest.json"
FORMAT = "hipcad-bundle/1"
# The demo bundle shipped inside the package (trained on synthetic phantoms: none of its weights are clinical).
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "demo"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_bundle(out: Path):
    """A temporary folder beside ``out`` to assemble a bundle in: it replaces ``out`` when the
    block finishes and is removed when it fails, so a failed export never leaves half a bundle."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    os.chmod(work, 0o755)  # mkdtemp makes it private; the worker's service user must read it
    try:
        yield work
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


class Bundle:
    """A model bundle on disk. Reading the manifest is cheap; the ONNX hash is checked on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{self.path} is not a model bundle: {MANIFEST} is missing")
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise BundleError(f"cannot read {manifest_path}: {err}") from err
        if self.manifest.get("format") != FORMAT:
            raise BundleError(f"{manifest_path}: unknown bundle format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        try:
            shape = self.manifest["input"]["shape"]
            self.input_hw: tuple[int, int] = (int(shape[2]), int(shape[3]))
            self.class_names: list[str] = list(self.manifest["class_names"])
            self.onnx_path = self.path / self.manifest["onnx"]["file"]
            self.onnx_sha256: str = self.manifest["onnx"]["sha256"]
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise BundleError(f"{manifest_path} lacks a required field: {err}") from err
        if not self.onnx_path.is_file():
            raise BundleError(f"bundle {self.path}: {self.onnx_path.name} is missing")

    # -- identity -----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.get("name", self.path.name)

    @property
    def architecture(self) -> str:
        return self.manifest.get("architecture", "unknown")

    @property
    def synthetic_demo(self) -> bool:
        return bool(self.manifest.get("synthetic_demo", False))

    @property
    def precision(self) -> str:
        """"fp32", or "int8" for a bundle made by ``hipcad quantize``."""
        return self.manifest.get("precision", "fp32")

    @property
    def trained(self) -> bool:
        return bool(self.manifest.get("trained", False))

    @property
    def label(self) -> str:
        """The one-line description shown wherever the model is named."""
        notice = self.notice
        return notice.label(self.name) if notice else self.name

    @property
    def notice(self) -> SafetyNotice | None:
        """The safety notice its output carries (untrained or synthetic demo), else None."""
        return safety_notice(self.trained, self.synthetic_demo)

    # -- decision -----------------------------------------------------------------------
    @property
    def operating_point(self) -> str:
        return self.manifest.get("operating_point", "default")

    @property
    def threshold(self) -> float:
        points = self.manifest.get("operating_points") or {}
        point = points.get(self.operating_point)
        if point is None:
            raise BundleError(f"bundle {self.path}: operating point {self.operating_point!r} is not defined")
        return float(point["threshold"])

    @cached_property
    def calibration(self) -> Calibration:
        """How the logits become the number shown (manifest ``calibration``: temperature and bias,
        written by ``hipcad train`` or ``hipcad calibrate``); none fitted: the plain softmax, a score."""
        entry = self.manifest.get("calibration")
        if not entry:
            return UNCALIBRATED
        try:
            return Calibration(float(entry["temperature"]), float(entry.get("bias", 0.0)), calibrated=True)
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"bundle {self.path}: the calibration in {MANIFEST} is malformed ({err})") from err

    @property
    def key(self) -> str:
        """Names these weights wherever results of several models could mix (the drift records)."""
        return f"{self.name}@{self.onnx_sha256[:12]}"

    # -- integrity ----------------------------------------------------------------------
    @cached_property
    def verified_onnx_bytes(self) -> bytes:
        """The ONNX file's bytes, after checking them against the manifest's sha256."""
        data = self.onnx_path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.onnx_sha256:
            raise BundleError(
                f"bundle {self.path}: {self.onnx_path.name} does not match its manifest "
                f"(sha256 {actual[:12]}..., manifest says {self.onnx_sha256[:12]}...); refusing to load it"
            )
        return data

    def file(self, key: str) -> Path | None:
        """Path of an optional bundle member named in the manifest (e.g. ``selftest``)."""
        entry = self.manifest.get(key)
        if not entry:
            return None
        return self.path / entry["file"]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "architecture": self.architecture,
            "input_size": list(self.input_hw),
            "precision": self.precision,
            "synthetic_demo": self.synthetic_demo,
            "trained": self.trained,
            "operating_point": self.operating_point,
            "threshold": self.threshold,
            "calibrated": self.calibration.calibrated,
            "temperature": self.calibration.temperature,
            "bias": self.calibration.bias,
            "label": self.label,
        }


def load_bundle(path: str | Path | None = None) -> Bundle:
    if path is None:
        if not (DEFAULT_BUNDLE / MANIFEST).is_file():
            raise BundleError(
                "no model given and no default bundle is installed; pass --model BUNDLE "
                "(make one with `hipcad export`)"
            )
        path = DEFAULT_BUNDLE
    return Bundle(path)
