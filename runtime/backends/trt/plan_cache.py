"""Where TensorRT plans live, and when a stored plan may be loaded. Pure Python: no TensorRT, no torch.

A plan (serialized engine) only fits the ONNX graph, GPU, TensorRT version and build options it was
built with: "By default, TensorRT engines are compatible only with the version of TensorRT used to
build them" and, without hardware compatibility mode, "not portable across different GPU
architectures" (TensorRT developer guide, "Version Compatibility"; support matrix, "Engine
Portability"). So every plan is filed under the sha256 of an :class:`EngineKey` naming all of these:

    <dir>/<key sha256>.plan   the serialized engine
    <dir>/<key sha256>.json   sidecar: the key fields, the plan's sha256 and size, who built it

``<dir>`` is a configured cache directory, else ``engines/`` beside the bundle's manifest; lookups try
the configured directory first, then the bundle's (where a vendor may ship plans built for a box).
A plan is only returned when its sidecar names exactly the requested key and the plan's bytes hash to
the sha256 the sidecar recorded; anything else (stale, foreign, truncated, corrupt) is reported and
treated as a miss, so the caller rebuilds it or refuses with the reasons.

The key takes the ONNX hash from the manifest: the plan was built from bytes verified against that
hash (``engine_build`` reads ``Bundle.verified_onnx_bytes``), and at run time only the plan executes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hipcad.runtime.durable import atomic_write
from hipcad.runtime.errors import BackendUnavailableError

if TYPE_CHECKING:
    from hipcad.runtime.model.bundle import Bundle

log = logging.getLogger(__name__)

#: what engine_build puts in a plan; bump it when that changes (profile, precision pins...) so old plans miss
RECIPE = "hipcad-trt-plan/2"  # 2: DETAILED profiling verbosity, engine inspected, heatmap checked
PRECISIONS = ("fp16", "fp32")
ENGINES_DIR = "engines"


class PlanCacheError(BackendUnavailableError):
    """A stored plan is stale, foreign or corrupt; it is never loaded."""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class EngineKey:
    """Everything a plan depends on. Its sha256 (``digest``) names the plan's files."""

    onnx_sha256: str
    gpu_name: str
    compute_capability: str
    #: the exact TensorRT version, or "<major>.x" for a version-compatible plan, which later
    #: runtimes of the same major version may load (checked against the builder's version on lookup)
    tensorrt: str
    precision: str
    version_compatible: bool
    max_batch: int
    recipe: str = RECIPE

    @classmethod
    def make(cls, bundle: "Bundle", gpu: GpuInfo, trt_version: str, precision: str, *,
             max_batch: int = 2, version_compatible: bool = False) -> "EngineKey":
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        series = f"{trt_version.split('.')[0]}.x" if version_compatible else trt_version
        major, minor = gpu.compute_capability
        return cls(bundle.onnx_sha256, gpu.name, f"{major}.{minor}", series, precision,
                   bool(version_compatible), int(max_batch))

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def plan_dirs(bundle: "Bundle", cache_dir: str | Path | None = None) -> list[Path]:
    """Directories searched for plans, in order; new plans are written to the first."""
    return ([Path(cache_dir)] if cache_dir else []) + [bundle.path / ENGINES_DIR]


def timing_cache_path(bundle: "Bundle", gpu: GpuInfo, trt_version: str, cache_dir: str | Path | None = None) -> Path:
    """The TensorRT timing cache kept beside the plans, one per GPU model and TensorRT version."""
    tag = hashlib.sha256(f"{gpu.name}|{gpu.compute_capability}|{trt_version}".encode()).hexdigest()[:16]
    return plan_dirs(bundle, cache_dir)[0] / f"timing-{tag}.cache"


def lookup(bundle: "Bundle", gpu: GpuInfo, trt_version: str, precision: str, *, max_batch: int = 2,
           version_compatible: bool = False, cache_dir: str | Path | None = None,
           problems: list[str] | None = None) -> Path | None:
    """The path of a valid plan for this bundle, GPU, TensorRT version and options, or None.

    Unusable plans found on the way are logged as warnings and, if ``problems`` is given, appended to
    it, so that a caller who may not rebuild can say why it refuses.
    """
    key = EngineKey.make(bundle, gpu, trt_version, precision, max_batch=max_batch, version_compatible=version_compatible)
    for directory in plan_dirs(bundle, cache_dir):
        plan = directory / f"{key.digest}.plan"
        if not (plan.exists() or plan.with_suffix(".json").exists()):
            continue
        try:
            read_plan(plan, key, trt_version)
            return plan
        except PlanCacheError as err:
            log.warning("%s", err)
            if problems is not None:
                problems.append(str(err))
    return None


def read_plan(plan: Path, key: EngineKey, trt_version: str) -> tuple[bytes, dict]:
    """The plan's bytes and sidecar record, after checking both against ``key``; else PlanCacheError.

    Callers deserialize exactly the bytes returned here, so what was verified is what runs.
    """
    sidecar = plan.with_suffix(".json")
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PlanCacheError(f"TensorRT plan {plan} has no readable sidecar {sidecar.name} ({err}); not loading it") from err
    stored = record.get("key") if isinstance(record, dict) else None
    if stored != asdict(key):
        fields = sorted(k for k, v in asdict(key).items() if not isinstance(stored, dict) or stored.get(k) != v)
        raise PlanCacheError(f"TensorRT plan {plan} was built for another configuration (differs in: "
                             f"{', '.join(fields)}); stale or foreign, not loading it")
    try:
        data = plan.read_bytes()
    except OSError as err:
        raise PlanCacheError(f"cannot read TensorRT plan {plan}: {err}") from err
    actual = hashlib.sha256(data).hexdigest()
    if actual != record.get("plan_sha256"):
        raise PlanCacheError(f"TensorRT plan {plan} is corrupt (sha256 {actual[:12]}..., its sidecar recorded "
                             f"{str(record.get('plan_sha256'))[:12]}...); not loading it")
    built_with = str(record.get("tensorrt_built", ""))
    if key.version_compatible and _version(built_with) > _version(trt_version):
        raise PlanCacheError(f"version-compatible TensorRT plan {plan} was built with TensorRT {built_with}, "
                             f"newer than this runtime ({trt_version}); not loading it")
    return data, record


def write_plan(bundle: "Bundle", key: EngineKey, plan, *, trt_version: str,
               cache_dir: str | Path | None = None, extra: dict | None = None) -> Path:
    """Store a serialized plan (bytes or any buffer, e.g. TensorRT's IHostMemory) and its sidecar.

    The old sidecar goes first and the new one is written last, each file atomically, so a crash at
    any point leaves either a complete, verifiable pair or a miss, never a plan that looks valid.
    """
    directory = plan_dirs(bundle, cache_dir)[0]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key.digest}.plan"
    sidecar = path.with_suffix(".json")
    data = memoryview(plan).cast("B")
    sidecar.unlink(missing_ok=True)
    atomic_write(path, data)
    record = {
        "key": asdict(key),
        "digest": key.digest,
        "plan_sha256": hashlib.sha256(data).hexdigest(),
        "plan_bytes": data.nbytes,
        "tensorrt_built": trt_version,
        "bundle": bundle.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    atomic_write(sidecar, json.dumps(record, indent=2).encode("utf-8"))
    return path


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))
