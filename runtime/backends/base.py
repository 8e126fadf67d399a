"""The backend interface, after Polygraphy's runners.

A backend takes a batch of 8-bit grayscale half-images ``uint8 [N, 1, H, W]`` and returns
``logits float32 [N, 2]`` and ``cam float32 [N, h, w]`` computed in one forward pass (see the
bundle's ONNX graph contract). Subclasses implement only the ``*_impl`` methods; callers use
``activate`` / ``infer`` / ``deactivate`` or the context-manager form::

    with open_backend("onnxruntime", bundle) as backend:
        logits, cam = backend.infer(batch)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from hipcad.runtime.errors import BackendUnavailableError, HipcadError

if TYPE_CHECKING:
    from hipcad.runtime.model.bundle import Bundle


def in_batches(run, batch: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """``run`` (part -> outputs) over slices of ``batch`` of at most ``size``, each output joined
    along the batch; one call when the batch fits (an engine or server built for batches up to
    ``size`` never sees a larger one)."""
    if len(batch) <= size:
        return tuple(run(batch))
    parts = [run(batch[i:i + size]) for i in range(0, len(batch), size)]
    return tuple(np.concatenate(outputs) for outputs in zip(*parts))


class Backend:
    #: registry name ("onnxruntime", "tensorrt", "torch", "triton")
    name: str = "base"
    #: the precision the outputs were computed in, as far as the backend could verify it ("fp32" | "tf32" |
    #: "fp16" | "int8"; "tf32" = FP32 requested, TF32 not provably off); selects the self-test tolerances
    precision: str = "fp32"

    def __init__(self, bundle: "Bundle") -> None:
        self.bundle = bundle
        self.is_active = False
        #: seconds spent in activate() (model load, engine deserialisation, warm-up)
        self.load_seconds: float | None = None
        #: human-readable description of the device actually used ("CPU", "CUDA:0 NVIDIA H100"...)
        self.device: str = "unknown"
        #: how ``precision`` was established (a setting read back, an inspected engine...), for reports
        self.precision_note: str | None = None
        #: result of the self-test on the bundle's reference inputs (set by open_backend)
        self.selftest: dict | None = None
        #: why backends earlier in the ``auto`` order were not used, if any
        self.fallback_reason: str | None = None

    # -- availability ---------------------------------------------------------------------
    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """(True, "") where this backend can run here, else (False, why and what to install)."""
        return True, ""

    @classmethod
    def require_available(cls) -> None:
        ok, why = cls.availability()
        if not ok:
            raise BackendUnavailableError(f"backend {cls.name!r} is not available: {why}")

    # -- life cycle -----------------------------------------------------------------------
    def activate(self) -> "Backend":
        if self.is_active:
            return self
        self.require_available()
        start = time.perf_counter()
        try:
            self.activate_impl()
        except HipcadError:
            raise
        except Exception as err:  # a library error while loading: say which backend and why
            raise BackendUnavailableError(f"backend {self.name!r} failed to load the model: {err}") from err
        self.is_active = True
        self.load_seconds = time.perf_counter() - start
        return self

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self.deactivate_impl()
            finally:
                self.is_active = False

    def __enter__(self) -> "Backend":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.is_active:
            raise HipcadError(f"backend {self.name!r} used before activate()")
        batch = np.ascontiguousarray(batch)
        expected = (1, *self.bundle.input_hw)
        if batch.dtype != np.uint8 or batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise HipcadError(
                f"backend input must be uint8 [N, {expected[0]}, {expected[1]}, {expected[2]}], "
                f"got {batch.dtype} {list(batch.shape)}"
            )
        logits, cam = self.infer_impl(batch)
        return np.asarray(logits, dtype=np.float32), np.asarray(cam, dtype=np.float32)

    # -- for subclasses -------------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        pass
