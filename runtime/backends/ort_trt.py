"""ONNX Runtime's TensorRT execution provider: its options, and its engine cache filed like ``build-engine``'s.

ONNX Runtime names its cached engines after the model graph, precision and compute capability
(``TensorrtExecutionProvider_TRTKernel_graph_..._fp16_sm89.engine``), not after the GPU model,
TensorRT or ONNX Runtime version, and its documentation asks users to delete them by hand when any
of those change ("TensorRT Execution Provider", engine cache warning). So hipcad gives every
configuration its own folder, named by the same :class:`~hipcad.runtime.backends.trt.plan_cache.EngineKey`
digest rules as the plans of ``build-engine``, plus the ONNX Runtime version:

    <dir>/ort-trt/<digest>/        engines, profiles and the timing cache ONNX Runtime writes
    <dir>/ort-trt/<digest>.json    sidecar: the key, so a person (and gpu-check) can tell what it is for

``<dir>`` is the same folder ``build-engine`` writes to: the configured cache directory, else
``engines/`` beside the bundle. A change of GPU, TensorRT, ONNX Runtime, ONNX graph, precision or
batch range is a new folder, never a stale engine. The provider has no per-layer precision and no
TF32 option: FP16 here (``trt_fp16_enable``) runs the heatmap in FP16 too, and FP32 is FP32 only
with ``NVIDIA_TF32_OVERRIDE=0`` (:mod:`hipcad.runtime.backends.tf32`).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from hipcad.runtime.backends.trt.builder import DEFAULT_WORKSPACE_MB, INPUT
from hipcad.runtime.backends.trt.plan_cache import EngineKey, GpuInfo, plan_dirs
from hipcad.runtime.durable import atomic_write
from hipcad.runtime.errors import BackendUnavailableError

if TYPE_CHECKING:
    from hipcad.runtime.model.bundle import Bundle

RUNTIME = "onnxruntime-tensorrt-ep"
SUBDIR = "ort-trt"
LIBNVINFER = ("libnvinfer.so.10", "libnvinfer.so")


def tensorrt_library_version() -> str:
    """``major.minor.patch`` of the TensorRT library ONNX Runtime will load (``getInferLibVersion``,
    NvInferRuntime.h: major * 10000 + minor * 100 + patch). The ``tensorrt`` wheel, when installed,
    puts its libraries in the process when imported, so it is tried second."""
    for attempt in ("library path", "tensorrt wheel"):
        if attempt == "tensorrt wheel":
            try:
                import tensorrt  # noqa: F401 - loads the wheel's libnvinfer into the process
            except Exception:  # noqa: BLE001 - not installed, or its libraries do not load
                break
        for name in LIBNVINFER:
            try:
                number = int(ctypes.CDLL(name).getInferLibVersion())
            except (OSError, AttributeError):
                continue
            return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    raise BackendUnavailableError(
        "ONNX Runtime's TensorRT provider needs TensorRT 10's libnvinfer.so.10, which cannot be loaded here "
        "(pip install 'hipcad[tensorrt]', or add TensorRT's lib folder to LD_LIBRARY_PATH)")


def cache_key(bundle: "Bundle", gpu: GpuInfo, trt_version: str, ort_version: str, precision: str,
              max_batch: int) -> dict:
    key = EngineKey.make(bundle, gpu, trt_version, precision, max_batch=max_batch)
    return {**asdict(key), "runtime": RUNTIME, "onnxruntime": ort_version}


def cache_folder(bundle: "Bundle", key: dict, cache_dir: str | Path | None = None) -> Path:
    """The engine cache folder for ``key`` (made, with its sidecar, when missing)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    folder = plan_dirs(bundle, cache_dir)[0] / SUBDIR / digest
    sidecar = folder.with_suffix(".json")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not sidecar.is_file():
            record = {"key": key, "digest": digest, "bundle": bundle.name,
                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            atomic_write(sidecar, json.dumps(record, indent=2).encode("utf-8"))
    except OSError as err:
        raise BackendUnavailableError(f"cannot use {folder} for ONNX Runtime's TensorRT engines ({err}); "
                                      "give a writable cache directory") from err
    return folder


def provider_options(bundle: "Bundle", folder: Path, precision: str, max_batch: int, device_index: int = 0) -> dict:
    """TensorRT provider options (names from the provider's documentation): engine and timing cache in
    ``folder``, one optimisation profile for batch 1..max_batch (optimum 2), FP16 only when asked."""
    height, width = bundle.input_hw

    def shape(n: int) -> str:
        return f"{INPUT}:{n}x1x{height}x{width}"

    return {
        "device_id": device_index,
        "trt_fp16_enable": precision == "fp16",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(folder),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(folder),
        "trt_max_workspace_size": DEFAULT_WORKSPACE_MB << 20,
        "trt_profile_min_shapes": shape(1),
        "trt_profile_opt_shapes": shape(min(2, max_batch)),
        "trt_profile_max_shapes": shape(max_batch),
    }
