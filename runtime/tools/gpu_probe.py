"""What ``hipcad gpu-check`` reports about the machine: GPU, driver, library versions, the environment.

Every probe answers with a value or with why it could not (a missing package, no driver...), and
none raises: the report is written whatever this machine has.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

ENVIRONMENT = ("NVIDIA_TF32_OVERRIDE", "CUDA_VISIBLE_DEVICES", "CUDA_MODULE_LOADING", "LD_LIBRARY_PATH")


def _try(probe):
    try:
        return probe()
    except Exception as err:  # noqa: BLE001 - a probe reports why it could not, never raises
        return {"error": f"{type(err).__name__}: {err}"}


def nvidia_smi() -> dict:
    """GPU 0 as ``nvidia-smi`` sees it (name, driver, memory, compute capability)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"error": "nvidia-smi not found (no NVIDIA driver installed here)"}
    fields = ("name", "driver_version", "memory.total", "compute_cap")
    for query in (fields, fields[:3]):  # compute_cap: newer drivers only
        proc = subprocess.run([exe, f"--query-gpu={','.join(query)}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode == 0 and proc.stdout.strip():
            rows = [[v.strip() for v in line.split(",")] for line in proc.stdout.strip().splitlines()]
            gpu = dict(zip(query, rows[0]))
            return {"name": gpu["name"], "driver": gpu["driver_version"],
                    "memory_mib": int(float(gpu["memory.total"])), "compute_capability": gpu.get("compute_cap"),
                    "count": len(rows), "source": "nvidia-smi"}
    return {"error": f"nvidia-smi failed: {(proc.stderr or proc.stdout).strip()[:300]}"}


def cuda_driver() -> dict:
    from hipcad.runtime.backends import cuda_driver as driver

    found = driver.query_device(0)
    major, minor = found.gpu.compute_capability
    return {"name": found.gpu.name, "compute_capability": f"{major}.{minor}",
            "memory_mib": found.total_memory_bytes >> 20, "driver_cuda": found.driver_cuda, "source": "libcuda"}


def pycuda_device() -> dict:
    import pycuda.driver as cuda

    cuda.init()
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return {"name": device.name(), "compute_capability": f"{major}.{minor}", "memory_mib": device.total_memory() >> 20,
            "source": "pycuda"}


def gpu() -> dict:
    """GPU 0 from nvidia-smi, the CUDA driver API and pycuda (earlier sources win); ``error`` when none works."""
    found = [_try(probe) for probe in (nvidia_smi, cuda_driver, pycuda_device)]
    if all("error" in f for f in found):
        return {"error": "no NVIDIA GPU found: " + "; ".join(f["error"] for f in found)}
    merged = {}
    for f in reversed(found):
        merged.update({k: v for k, v in f.items() if k != "error"})
    merged["source"] = "+".join(f["source"] for f in found if "source" in f)
    return merged


def _onnxruntime() -> dict:
    import onnxruntime

    from hipcad.runtime.backends.onnxrt import installed_onnxruntime_distributions

    return {"version": onnxruntime.__version__, "distributions": installed_onnxruntime_distributions(),
            "providers": onnxruntime.get_available_providers()}


def _torch() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    info = {"version": torch.__version__, "built_for_cuda": torch.version.cuda, "cuda_available": cuda}
    if cuda:
        info.update(device=torch.cuda.get_device_name(), cudnn=torch.backends.cudnn.version())
    return info


def _tensorrt() -> dict:
    import tensorrt

    return {"version": tensorrt.__version__}


def _pycuda() -> dict:
    import pycuda
    import pycuda.driver as cuda

    info = {"version": pycuda.VERSION_TEXT}
    cuda.init()
    version = cuda.get_driver_version()
    info.update(driver_cuda=f"{version // 1000}.{version % 1000 // 10}", devices=cuda.Device.count())
    return info


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        hipcad = version("hipcad")
    except PackageNotFoundError:
        hipcad = "not installed as a distribution"
    import numpy

    return {"hipcad": hipcad, "python": sys.version.split()[0], "platform": platform.platform(),
            "numpy": numpy.__version__, "onnxruntime": _try(_onnxruntime), "torch": _try(_torch),
            "tensorrt": _try(_tensorrt), "pycuda": _try(_pycuda)}


def environment() -> dict:
    return {name: os.environ.get(name) for name in ENVIRONMENT}
