"""ONNX Runtime backend: CPU everywhere; CUDA or TensorRT execution providers where installed."""

from __future__ import annotations

import os

import numpy as np

from hipcad.runtime.backends.base import Backend
from hipcad.runtime.errors import BackendUnavailableError

PROVIDER_CHOICES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle, device: str = "auto", threads: int | None = None) -> None:
        super().__init__(bundle)
        if device not in ("auto", *PROVIDER_CHOICES):
            raise BackendUnavailableError(f"onnxruntime device must be auto, cpu, cuda or tensorrt, not {device!r}")
        self.requested_device = device
        self.threads = threads
        self.precision = bundle.precision

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False, "the onnxruntime package is not installed (pip install onnxruntime)"
        return True, ""

    def _providers(self) -> list[str]:
        import onnxruntime as ort

        available = set(ort.get_available_providers())
        if self.requested_device == "auto":
            # INT8 (QOperator) graphs are made for CPUs: on the CUDA provider their operators would
            # fall back to the CPU one by one
            gpu = "CUDAExecutionProvider" in available and self.precision != "int8"
            wanted = PROVIDER_CHOICES["cuda"] if gpu else PROVIDER_CHOICES["cpu"]
        else:
            wanted = PROVIDER_CHOICES[self.requested_device]
            if wanted[0] not in available:
                raise BackendUnavailableError(
                    f"onnxruntime has no {wanted[0]} here (available: {', '.join(sorted(available))}); "
                    "install onnxruntime-gpu on an NVIDIA box"
                )
        return [p for p in wanted if p in available]

    def activate_impl(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads or os.cpu_count() or 1
        options.log_severity_level = 3
        providers = self._providers()
        # the bytes are checked against the manifest's sha256 before ONNX Runtime sees them
        self.session = ort.InferenceSession(self.bundle.verified_onnx_bytes, options, providers=providers)
        used = self.session.get_providers()
        self.device = "CPU" if used[0] == "CPUExecutionProvider" else used[0].removesuffix("ExecutionProvider")
        if self.requested_device == "auto" and "CUDAExecutionProvider" in providers and used[0] == "CPUExecutionProvider":
            self.device = "CPU (CUDA provider failed to initialise)"

    def infer_impl(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, cam = self.session.run(["logits", "cam"], {"image": batch})
        return logits, cam

    def deactivate_impl(self) -> None:
        self.session = None
