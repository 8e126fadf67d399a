"""Inference backends (:mod:`.base` the interface, :mod:`.registry` by name; :mod:`.onnxrt`,
:mod:`.pyt`, :mod:`.trt`, :mod:`.triton`)."""

from hipcad.runtime.backends.base import Backend
from hipcad.runtime.backends.registry import (
    AUTO_ORDER,
    BACKENDS,
    CHOICES,
    VARIANTS,
    availability,
    backend_class,
    open_backend,
)

__all__ = ["AUTO_ORDER", "BACKENDS", "CHOICES", "VARIANTS", "Backend", "availability", "backend_class", "open_backend"]
