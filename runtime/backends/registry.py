"""The backend registry: backends by name, imported lazily so a CPU-only box never touches tensorrt,
pycuda or tritonclient; ``open_backend`` activates and self-tests one (``auto``: the fastest that loads)."""

from __future__ import annotations

import importlib
import logging

from hipcad.runtime.backends.base import Backend
from hipcad.runtime.errors import BackendUnavailableError, HipcadError

log = logging.getLogger(__name__)

BACKENDS = {
    "tensorrt": "hipcad.runtime.backends.trt.runner:TensorRTBackend",
    "onnxruntime": "hipcad.runtime.backends.onnxrt:OnnxRuntimeBackend",
    "torch": "hipcad.runtime.backends.pyt:TorchBackend",
    # a Triton Inference Server (needs its address, so never chosen by auto)
    "triton": "hipcad.runtime.backends.triton:TritonBackend",
}
# names that open a backend with options: ONNX Runtime's GPU providers (onnxruntime-gpu), asked for by name
VARIANTS = {
    "onnxruntime-cuda": ("onnxruntime", {"device": "cuda"}),
    "onnxruntime-tensorrt": ("onnxruntime", {"device": "tensorrt"}),
}
# --backend auto: the fastest local backend first
AUTO_ORDER = ("tensorrt", "onnxruntime")
CHOICES = ("auto", *BACKENDS, *VARIANTS)


def backend_class(name: str) -> type[Backend]:
    name = VARIANTS.get(name, (name, {}))[0]
    try:
        target = BACKENDS[name]
    except KeyError:
        raise BackendUnavailableError(f"unknown backend {name!r}; choose from {', '.join(CHOICES)}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def availability() -> dict[str, tuple[bool, str]]:
    return {name: backend_class(name).availability() for name in BACKENDS}


def open_backend(name: str, bundle, selftest: bool = True, per_backend: dict | None = None, **options) -> Backend:
    """An activated (and self-tested) backend. ``auto`` takes the first in AUTO_ORDER that loads.
    ``per_backend`` maps a backend's name to options only it takes (e.g. TensorRT's ``cache_dir``).

    The backend's ``fallback_reason`` says why earlier choices were skipped (for the log, the
    kiosk banner and /api/health).
    """
    names = AUTO_ORDER if name == "auto" else (name,)
    reasons = []
    for candidate in names:
        cls = backend_class(candidate)
        ok, why = cls.availability()
        if not ok:
            if name != "auto":
                cls.require_available()  # raises, naming the backend and what to install
            reasons.append(f"{candidate}: {why}")
            continue
        backend = cls(bundle, **{**VARIANTS.get(candidate, (candidate, {}))[1], **options,
                                 **(per_backend or {}).get(candidate, {})})
        try:
            backend.activate()
            if selftest:
                from hipcad.runtime.model.selftest import run_selftest

                backend.selftest = run_selftest(backend)
        except HipcadError as err:
            backend.deactivate()
            if name != "auto":
                raise
            reasons.append(f"{candidate}: {err}")
            log.warning("backend %s not used: %s", candidate, err)
            continue
        backend.fallback_reason = "; ".join(reasons) or None
        return backend
    raise BackendUnavailableError("no inference backend could be loaded: " + "; ".join(reasons))
