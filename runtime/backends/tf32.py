"""FP32 that is FP32 on NVIDIA GPUs: TF32 off, and proof of it for the precision a backend reports.

TF32 ("TensorFloat-32") rounds the inputs of FP32 matrix products and convolutions to a 10-bit
mantissa - FP16's precision - on Ampere and newer GPUs, and every GPU library hipcad uses turns it on
by default: ONNX Runtime's CUDA provider (``use_tf32``, true by default; the option came with
microsoft/onnxruntime PRs #19357 and #19426, 2024),
PyTorch's cuDNN convolutions (``torch.backends.cudnn.allow_tf32 = True``), TensorRT's builder
(``BuilderFlag.TF32``, "Enabled by default"). Each backend turns it off where FP32 is asked for and
reads the setting back; what it cannot verify it reports as ``"tf32"``, whose self-test tolerance is
FP16's (the same mantissa).

``NVIDIA_TF32_OVERRIDE=0`` disables TF32 process-wide in cuBLAS, cuDNN and TensorRT. It is the only
switch for ONNX Runtime's TensorRT provider (it has no TF32 option), and it is read when those
libraries initialise, so it counts only if it was in the environment when the process started
(systemd's GPU drop-ins set it) or was set here before the CUDA driver was loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

TF32_OVERRIDE = "NVIDIA_TF32_OVERRIDE"
_state = {"set_before_cuda": False}


def _initial_environment(path: str = "/proc/self/environ") -> dict[str, str]:
    """The environment this process was started with (Linux keeps it in /proc; later changes to
    ``os.environ`` do not show there)."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return {}
    pairs = (entry.split(b"=", 1) for entry in raw.split(b"\0") if b"=" in entry)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def cuda_driver_loaded(path: str = "/proc/self/maps") -> bool:
    """Whether the CUDA driver library is mapped into this process (True where that cannot be told)."""
    try:
        maps = Path(path).read_text(errors="replace")
    except OSError:
        return True
    return "/libcuda.so" in maps


def process_tf32_off() -> tuple[bool, str]:
    """Make ``NVIDIA_TF32_OVERRIDE=0`` govern this process if it still can.

    Returns (True, how) when it is in force - set when the process started, or set now (or earlier
    by this function) before the CUDA driver was loaded - else (False, why not).
    """
    if os.environ.get(TF32_OVERRIDE) == "0":
        if _initial_environment().get(TF32_OVERRIDE) == "0":
            return True, f"{TF32_OVERRIDE}=0 in the environment the process started with"
        if _state["set_before_cuda"]:
            return True, f"{TF32_OVERRIDE}=0 set by hipcad before CUDA was loaded"
    if cuda_driver_loaded():
        return False, (f"CUDA was loaded in this process before {TF32_OVERRIDE}=0 was set; start the process "
                       f"with {TF32_OVERRIDE}=0 in its environment (the systemd GPU drop-ins do)")
    os.environ[TF32_OVERRIDE] = "0"
    _state["set_before_cuda"] = True
    return True, f"{TF32_OVERRIDE}=0 set by hipcad before CUDA was loaded"


def torch_tf32_off(torch) -> tuple[bool, str]:
    """Turn TF32 off for PyTorch's CUDA matmuls and cuDNN convolutions and read it back.

    torch >= 2.9 has the ``fp32_precision`` settings ("ieee" = full FP32) and, after they are used,
    refuses to read the legacy ``allow_tf32`` flags for cuDNN; older torch has only ``allow_tf32``.
    So one API sets and reads, whichever this torch has. The settings are process-wide.
    """
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = "ieee"
        cudnn.conv.fp32_precision = "ieee"
        cudnn.rnn.fp32_precision = "ieee"
        state = {"cuda.matmul": matmul.fp32_precision, "cudnn.conv": cudnn.conv.fp32_precision,
                 "cudnn.rnn": cudnn.rnn.fp32_precision}
        ok = set(state.values()) == {"ieee"}
    else:
        matmul.allow_tf32 = False
        cudnn.allow_tf32 = False
        state = {"cuda.matmul.allow_tf32": matmul.allow_tf32, "cudnn.allow_tf32": cudnn.allow_tf32}
        ok = not any(state.values())
    return ok, "torch TF32 off (read back: " + ", ".join(f"{k}={v}" for k, v in state.items()) + ")"
