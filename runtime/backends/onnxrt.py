"""ONNX Runtime backend: CPU everywhere; the CUDA or TensorRT execution providers with onnxruntime-gpu.

The precision it reports is read back from the session, not assumed: the CUDA provider is asked for
``use_tf32=0`` and reports ``fp32`` only when the session says that is what it runs with (else
``tf32``); the TensorRT provider reports ``fp16`` when asked for it (the whole graph, heatmap
included: the provider has no per-layer precision) and ``fp32`` only when ``NVIDIA_TF32_OVERRIDE=0``
governs the process (:mod:`hipcad.runtime.backends.tf32`). The self-test tolerance follows.

``onnxruntime`` and ``onnxruntime-gpu`` both install the ``onnxruntime`` module; with both in one
environment one silently overwrites the other ("Only one of these packages should be installed at a
time in any one environment", ONNX Runtime's install guide), so this backend refuses to run then.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import re

import numpy as np

from hipcad.runtime.backends import tf32
from hipcad.runtime.backends.base import Backend, in_batches
from hipcad.runtime.errors import BackendUnavailableError

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
DEVICES = ("auto", *PROVIDERS)
INSTALL = "pip install 'hipcad[cpu]', or 'hipcad[gpu]' on an NVIDIA box"
# the distributions that install the `onnxruntime` module (PyPI names, normalised)
ONNXRUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                             "onnxruntime-rocm", "onnxruntime-qnn")
TRUE = ("1", "true", "True")


@functools.cache
def installed_onnxruntime_distributions() -> tuple[str, ...]:
    """What installs the ``onnxruntime`` module here (a scan of every installed distribution, ~40 ms:
    once per process; what is installed does not change while it runs)."""
    found = set()
    for dist in importlib.metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata.get("Name") or "").lower()
        if name in ONNXRUNTIME_DISTRIBUTIONS:
            found.add(name)
    return tuple(sorted(found))


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle, device: str = "auto", threads: int | None = None, precision: str = "auto",
                 max_batch: int = 2, cache_dir=None, device_index: int = 0) -> None:
        """``device``: auto (CUDA provider where onnxruntime-gpu sees a GPU, else CPU), cpu, cuda or
        tensorrt. ``precision``: auto (the bundle's), fp32, or fp16 (TensorRT provider only).
        ``max_batch`` and ``cache_dir`` shape the TensorRT provider's engine (see :mod:`.ort_trt`)."""
        super().__init__(bundle)
        if device not in DEVICES:
            raise BackendUnavailableError(f"onnxruntime device must be one of {', '.join(DEVICES)}, not {device!r}")
        if precision not in ("auto", "fp32", "fp16"):
            raise BackendUnavailableError(f"onnxruntime precision must be auto, fp32 or fp16, not {precision!r}")
        if precision == "fp16" and device != "tensorrt":
            raise BackendUnavailableError("onnxruntime runs FP16 only through the TensorRT provider (device='tensorrt'); "
                                          f"the {device} provider runs the bundle's {bundle.precision} graph")
        if precision != "auto" and bundle.precision != "fp32":
            raise BackendUnavailableError(f"bundle {bundle.path} is {bundle.precision}; it runs as it is (precision='auto')")
        if max_batch < 1:
            raise BackendUnavailableError(f"max_batch must be at least 1, got {max_batch}")
        self.requested_device = device
        self.requested_precision = precision
        self.threads = threads
        self.max_batch = max_batch
        self.cache_dir = cache_dir
        self.device_index = device_index
        self.engine_cache = None  # the TensorRT provider's engine folder, when it is used
        self._tf32_override = (False, "NVIDIA_TF32_OVERRIDE not set up")
        self.precision = bundle.precision

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False, f"the onnxruntime package is not installed ({INSTALL})"
        found = installed_onnxruntime_distributions()
        if len(found) > 1:
            return False, (f"{' and '.join(found)} are installed in one environment and overwrite each other's "
                           f"onnxruntime module; keep one: pip uninstall -y {' '.join(found)}, then {INSTALL}")
        return True, ""

    def _providers(self, ort) -> list:
        """The provider list with options, best first (the CPU provider always last)."""
        available = set(ort.get_available_providers())
        device = self.requested_device
        if device == "auto":
            # INT8 (QOperator) graphs are made for CPUs: on the CUDA provider their operators would
            # fall back to the CPU one by one
            device = "cuda" if PROVIDERS["cuda"] in available and self.bundle.precision != "int8" else "cpu"
        if device == "tensorrt" and self.requested_precision != "fp16":
            self._tf32_override = tf32.process_tf32_off()  # before any CUDA library is loaded
        if device != "cpu" and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu >= 1.21: load the CUDA / cuDNN libraries of the nvidia-* wheels the gpu extra installs
            # (a no-op for the CPU package; libraries already loaded, e.g. by torch, are reused)
            ort.preload_dlls()
        if PROVIDERS[device] not in available:
            raise BackendUnavailableError(
                f"onnxruntime has no {PROVIDERS[device]} here (available: {', '.join(sorted(available))}); "
                "install onnxruntime-gpu on an NVIDIA box (pip install 'hipcad[gpu]')")
        # use_tf32: ONNX Runtime's CUDA provider option, true by default (cuda_execution_provider_info.h)
        cuda = (PROVIDERS["cuda"], {"device_id": self.device_index, "use_tf32": "0"})
        chain = [] if device == "cpu" else [cuda]
        if device == "tensorrt":
            chain.insert(0, (PROVIDERS["tensorrt"], self._tensorrt_options(ort)))
        return [p for p in chain if p[0] in available] + [PROVIDERS["cpu"]]

    def _tensorrt_options(self, ort) -> dict:
        from hipcad.runtime.backends import cuda_driver, ort_trt

        precision = "fp16" if self.requested_precision == "fp16" else "fp32"
        gpu = cuda_driver.query_device(self.device_index).gpu
        key = ort_trt.cache_key(self.bundle, gpu, ort_trt.tensorrt_library_version(), ort.__version__, precision,
                                self.max_batch)
        self.engine_cache = ort_trt.cache_folder(self.bundle, key, self.cache_dir)
        return ort_trt.provider_options(self.bundle, self.engine_cache, precision, self.max_batch, self.device_index)

    def activate_impl(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads or os.cpu_count() or 1
        providers = self._providers(ort)
        # errors only, but on a GPU also warnings: why a provider failed to initialise is one
        options.log_severity_level = 3 if len(providers) == 1 else 2
        # the bytes are checked against the manifest's sha256 before ONNX Runtime sees them
        self.session = ort.InferenceSession(self.bundle.verified_onnx_bytes, options, providers=providers)
        self._read_back([p if isinstance(p, str) else p[0] for p in providers])

    def _read_back(self, asked: list[str]) -> None:
        """Device and precision from what the session runs with (ONNX Runtime drops a provider that
        fails to initialise, with only a log line)."""
        used = self.session.get_providers()
        options = self.session.get_provider_options()
        first = used[0]
        if first != asked[0]:
            if self.requested_device != "auto":
                raise BackendUnavailableError(f"onnxruntime's {asked[0]} failed to initialise (it runs on {first}); "
                                              "ONNX Runtime's warnings above say why")
            log.warning("onnxruntime's %s failed to initialise; running on %s", asked[0], first)
        self.device = {PROVIDERS["cpu"]: "CPU", PROVIDERS["cuda"]: f"CUDA:{self.device_index}",
                       PROVIDERS["tensorrt"]: f"CUDA:{self.device_index} (TensorRT provider)"}.get(first, first)
        if self.requested_device == "auto" and len(asked) > 1 and first == PROVIDERS["cpu"]:
            self.device = "CPU (CUDA provider failed to initialise)"
        if first == PROVIDERS["cpu"] or self.bundle.precision != "fp32":
            self.precision, self.precision_note = self.bundle.precision, f"{self.bundle.precision} graph on {self.device}"
        elif first == PROVIDERS["tensorrt"]:
            trt_options = options.get(first, {})
            if str(trt_options.get("trt_fp16_enable")) in TRUE:
                self.precision = "fp16"
                self.precision_note = "TensorRT provider FP16 (the whole graph, heatmap included)"
            else:
                in_force, how = self._tf32_override
                self.precision = "fp32" if in_force else "tf32"
                self.precision_note = f"TensorRT provider FP32; TF32 {'off' if in_force else 'may be on'}: {how}"
        else:
            value = options.get(first, {}).get("use_tf32")
            self.precision = "fp32" if value is not None and str(value) not in TRUE else "tf32"
            self.precision_note = (f"CUDA provider use_tf32={value} (read back from the session)" if value is not None
                                   else "this onnxruntime has no use_tf32 option: its CUDA provider may use TF32")

    def infer_impl(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # the TensorRT provider's engine covers batch 1..max_batch; a larger batch would rebuild it
        size = self.max_batch if self.engine_cache is not None else len(batch)
        return in_batches(lambda part: self.session.run(["logits", "cam"], {"image": part}), batch, size)

    def deactivate_impl(self) -> None:
        self.session = None
