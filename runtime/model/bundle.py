"""Model bundles: a folder with ``manifest.json`` and ``model.onnx`` (the fixed interface of the
project's design notes: the manifest says what the model is, how it was made and how far to trust it).

:func:`load_bundle` admits only a bundle signed by a trusted key (:mod:`.signature`), unless the
development override is on (then its notice says so). Every file the manifest names must lie inside
the bundle; each is hashed against the manifest's files table when it is read (:meth:`Bundle.read_member`).
"""

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
from hipcad.runtime.model import intended_use, signature
from hipcad.runtime.model.notice import SafetyNotice, safety_notice

MANIFEST = "manifest.json"
FORMAT = "hipcad-bundle/1"
# The demo bundle shipped inside the package (trained on synthetic phantoms: none of its weights are clinical).
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "demo"


@contextlib.contextmanager
def staged_bundle(out: Path):
    """A temporary folder beside ``out`` to assemble a bundle in: it replaces ``out`` when the
    block finishes and is removed when it fails, so a failed export never leaves half a bundle.
    Writers sign the finished folder (``hipcad.runtime.tools.signing.sign_if_configured``) before the block ends."""
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

    def __init__(self, path: str | Path, trust: "signature.Trust | None" = None) -> None:
        """``trust`` None reads the bundle without checking who made it (workstation code working
        on its own output); :func:`load_bundle` always passes one."""
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{self.path} is not a model bundle: {MANIFEST} is missing")
        try:
            data = signature.safe_member(self.path, MANIFEST).read_bytes()
            self.manifest = json.loads(data.decode("utf-8"))
            if not isinstance(self.manifest, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            raise BundleError(f"cannot read {manifest_path}: {err}") from err
        if self.manifest.get("format") != FORMAT:
            raise BundleError(f"{manifest_path}: unknown bundle format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        try:
            shape = self.manifest["input"]["shape"]
            self.input_hw: tuple[int, int] = (int(shape[2]), int(shape[3]))
            self.class_names: list[str] = list(self.manifest["class_names"])
            self.onnx_sha256: str = self.manifest["onnx"]["sha256"]
            onnx_name = self.manifest["onnx"]["file"]
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise BundleError(f"{manifest_path} lacks a required field: {err}") from err
        self.onnx_path = signature.safe_member(self.path, onnx_name)
        self.files: dict = self.manifest.get("files") or {}
        self.signature = signature.verify(self.path, data, self.manifest, trust) if trust is not None else None

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
    def verified(self) -> bool:
        """False only when it was loaded under the development override without a valid signature."""
        return self.signature is None or self.signature.verified

    @property
    def notice(self) -> SafetyNotice | None:
        """The safety notice its output carries (unverified, untrained or synthetic demo), else None."""
        return safety_notice(self.trained, self.synthetic_demo, self.verified)

    # -- what it is for -----------------------------------------------------------------
    @cached_property
    def intended_use(self) -> dict:
        """The images this model is for (:mod:`hipcad.runtime.model.intended_use`), checked before
        every inference."""
        return intended_use.resolve(self.manifest.get("intended_use"), self.path)

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
        return self.verified_member("onnx")

    def verified_member(self, key: str) -> bytes:
        """The bytes of the member the manifest names under ``key`` (``onnx``, ``torch``), checked
        against that entry's own sha256 as well as the files table; the file is read and hashed once."""
        entry = self.manifest[key]
        data, digest = self._read_checked(entry["file"])
        if digest != entry.get("sha256"):
            raise BundleError(
                f"bundle {self.path}: {Path(entry['file']).name} does not match its manifest "
                f"(sha256 {digest[:12]}..., manifest says {str(entry.get('sha256'))[:12]}...); refusing to load it"
            )
        return data

    def read_member(self, name: str) -> bytes:
        """A file of the bundle, read once and checked against the manifest's files table (when the
        bundle has one; a signed bundle always has): what was checked is what the caller gets."""
        return self._read_checked(name)[0]

    def _read_checked(self, name: str) -> tuple[bytes, str]:
        """:meth:`read_member`, with the bytes' sha256."""
        data = signature.safe_member(self.path, name).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if self.files or self.signature is not None:
            entry = self.files.get(name)
            if not isinstance(entry, dict):
                raise BundleError(f"bundle {self.path}: {name} is not listed in the manifest's files; refusing it")
            if len(data) != entry.get("size") or digest != entry.get("sha256"):
                raise BundleError(f"bundle {self.path}: {name} does not match its manifest (changed after it was "
                                  "signed?); refusing to load it")
        return data, digest

    def file(self, key: str) -> Path | None:
        """Path of an optional bundle member named in the manifest (e.g. ``selftest``), inside the bundle."""
        entry = self.manifest.get(key)
        if not entry:
            return None
        if not isinstance(entry, dict) or "file" not in entry:
            raise BundleError(f"bundle {self.path}: manifest entry {key!r} names no file")
        return signature.safe_member(self.path, entry["file"], must_exist=False)

    def member_bytes(self, key: str) -> bytes | None:
        """The checked bytes of the member the manifest names under ``key``, or None when it names none."""
        entry = self.manifest.get(key)
        if not entry:
            return None
        self.file(key)
        return self.read_member(entry["file"])

    def identity(self) -> dict:
        """What every result says of the model that made it (with the backend's name, device and
        precision added by the pipeline): name, label, notices, operating point, calibration."""
        return {
            "name": self.name,
            "label": self.label,
            "synthetic_demo": self.synthetic_demo,
            "trained": self.trained,
            "verified": self.verified,
            "operating_point": self.operating_point,
            "threshold": self.threshold,
            "calibrated": self.calibration.calibrated,
            "temperature": self.calibration.temperature,
            "bias": self.calibration.bias,
        }

    def describe(self) -> dict:
        return {
            **self.identity(),
            "path": str(self.path),
            "architecture": self.architecture,
            "input_size": list(self.input_hw),
            "precision": self.precision,
            "signature": self.signature.public() if self.signature is not None else None,
        }


def load_bundle(path: str | Path | None = None, trust: "signature.Trust | None" = None) -> Bundle:
    """The bundle at ``path`` (default: the shipped demo model), signed by a key of ``trust``
    (default: :meth:`signature.Trust.from_environment`), or BundleError saying why not."""
    if path is None:
        if not (DEFAULT_BUNDLE / MANIFEST).is_file():
            raise BundleError(
                "no model given and no default bundle is installed; pass --model BUNDLE "
                "(make one with `hipcad export`)"
            )
        path = DEFAULT_BUNDLE
    return Bundle(path, trust if trust is not None else signature.Trust.from_environment())
