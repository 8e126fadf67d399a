"""Benchmark radiographs: the three sizes and formats of the paper's Table 1, plus compressed DICOM.

Made once with ``hipcad.runtime.synth`` and cached in a work folder (the 20-megapixel JPEG and the
JPEG 2000 encode take seconds each).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from hipcad.runtime.synth import render, sample_case, write_phantom

# name -> (width, height, synth format, required bit depth or None, how to compress afterwards)
KINDS = {
    "jpeg-4892x4020": (4892, 4020, "jpeg", None, None),
    "dicom16-3451x2836": (3451, 2836, "dcm-explicit", 16, None),
    "jpeg-2039x1380": (2039, 1380, "jpeg", None, None),
    "dicom-jpeg-lossless-3451x2836": (3451, 2836, "dcm-explicit", 16, "jpeg-lossless"),
    "dicom-j2k-3451x2836": (3451, 2836, "dcm-j2k", 16, None),
}


def _case(size, fmt, bits, seed):
    for index in range(200):
        spec = sample_case(seed, index, size=size, formats={fmt: 1.0}, mirror_rate=0.0)
        if bits is None or spec.vendor["bits"] == bits:
            return spec
    raise RuntimeError(f"no {bits}-bit case in 200 draws")


def make_inputs(workdir: Path, seed: int = 2024) -> dict[str, Path | str]:
    """Path per kind, or a string saying why the kind was skipped (e.g. no JPEG-lossless encoder)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path | str] = {}
    for name, (w, h, fmt, bits, post) in KINDS.items():
        suffix = ".jpg" if fmt == "jpeg" else ".dcm"
        path = workdir / f"{name}-{seed}{suffix}"
        if not path.exists():
            if post == "jpeg-lossless" and shutil.which("dcmcjpeg") is None:
                out[name] = "skipped: dcmtk's dcmcjpeg (JPEG lossless encoder) is not installed"
                continue
            record = write_phantom(render(_case((w, h), fmt, bits, seed)), workdir, name=f".{path.name}.src", fmt=fmt)
            source = Path(record.path)
            if post == "jpeg-lossless":
                # JPEG lossless, first-order prediction (process 14, selection value 1)
                done = subprocess.run(["dcmcjpeg", "+e1", str(source), str(path)], capture_output=True, text=True)
                source.unlink()
                if done.returncode != 0:
                    out[name] = f"skipped: dcmcjpeg failed: {done.stderr.strip()[:200]}"
                    continue
            else:
                source.replace(path)
        out[name] = path
    return out


def own_inputs(paths: list[str]) -> dict[str, Path | str]:
    """The user's own radiographs as input kinds (``--inputs``), named by file; a missing file is
    a kind skipped with the reason."""
    out: dict[str, Path | str] = {}
    for text in paths:
        path = Path(text)
        name = path.name if path.name not in out else str(path)
        out[name] = path if path.is_file() else f"skipped: {text} is not a file"
    return out
