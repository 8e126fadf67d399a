"""What the NVIDIA driver says about a GPU, through the CUDA driver API (``libcuda.so.1``) and ctypes.

For the code that has no pycuda: ONNX Runtime's TensorRT provider keys its engine cache by the GPU
as ``build-engine`` does, and ``gpu-check`` reports the GPU whatever is installed. Functions and
attribute numbers from the CUDA Driver API reference (``cuInit``, ``cuDeviceGet``,
``cuDeviceGetName``, ``cuDeviceGetAttribute`` with ``CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR``
= 75 / ``_MINOR`` = 76, ``cuDeviceTotalMem_v2``, ``cuDriverGetVersion``); each returns CUresult 0
on success. Loading libcuda does not create a CUDA context.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from hipcad.runtime.backends.trt.plan_cache import GpuInfo
from hipcad.runtime.errors import BackendUnavailableError

LIBCUDA = "libcuda.so.1"
COMPUTE_CAPABILITY_MAJOR, COMPUTE_CAPABILITY_MINOR = 75, 76


@dataclass(frozen=True)
class DriverDevice:
    gpu: GpuInfo
    total_memory_bytes: int
    #: the CUDA version the driver supports, e.g. "12.4" (cuDriverGetVersion 12040)
    driver_cuda: str


def _load(lib):
    if lib is not None:
        return lib
    try:
        return ctypes.CDLL(LIBCUDA)
    except OSError as err:
        raise BackendUnavailableError(f"no NVIDIA driver here ({LIBCUDA} cannot be loaded: {err})") from err


def _call(lib, name: str, *args) -> None:
    result = getattr(lib, name)(*args)
    if result != 0:
        raise BackendUnavailableError(f"CUDA driver call {name} failed (CUresult {result})")


def query_device(index: int = 0, lib=None) -> DriverDevice:
    """Name, compute capability, memory and driver CUDA version of CUDA device ``index``."""
    lib = _load(lib)
    _call(lib, "cuInit", 0)
    device, value, memory = ctypes.c_int(), ctypes.c_int(), ctypes.c_size_t()
    _call(lib, "cuDeviceGet", ctypes.byref(device), index)
    name = ctypes.create_string_buffer(256)
    _call(lib, "cuDeviceGetName", name, len(name), device)
    capability = []
    for attribute in (COMPUTE_CAPABILITY_MAJOR, COMPUTE_CAPABILITY_MINOR):
        _call(lib, "cuDeviceGetAttribute", ctypes.byref(value), attribute, device)
        capability.append(value.value)
    _call(lib, "cuDeviceTotalMem_v2", ctypes.byref(memory), device)
    _call(lib, "cuDriverGetVersion", ctypes.byref(value))
    version = value.value
    return DriverDevice(GpuInfo(name.value.decode(errors="replace"), (capability[0], capability[1])),
                        memory.value, f"{version // 1000}.{version % 1000 // 10}")
