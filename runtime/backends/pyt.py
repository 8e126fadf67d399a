"""PyTorch backend: the bundle's ``model.pt2`` (the fused model as a torch.export program).

CUDA with FP16 autocast where a GPU is present (``precision="auto"``), FP32 with TF32 off on request,
CPU FP32 otherwise; FP16 on a CPU is refused, not quietly run in FP32. It is the reference for
``hipcad parity`` and a backend for boxes that have PyTorch. torch is imported only here, and only
when this backend is used; it needs torch >= 2.5 (``torch.export.passes.move_to_device_pass``).
"""

from __future__ import annotations

import io

import numpy as np

from hipcad.runtime.backends import tf32
from hipcad.runtime.backends.base import Backend
from hipcad.runtime.errors import BackendUnavailableError


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, bundle, device: str = "auto", precision: str = "auto") -> None:
        super().__init__(bundle)
        if device not in ("auto", "cpu", "cuda") or precision not in ("auto", "fp32", "fp16"):
            raise BackendUnavailableError(f"torch backend: bad device {device!r} or precision {precision!r}")
        if device == "cpu" and precision == "fp16":
            raise BackendUnavailableError("torch backend: FP16 needs a CUDA GPU (device='cpu' runs FP32)")
        self.requested_device = device
        self.requested_precision = precision

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            import torch  # noqa: F401
        except ImportError:
            return False, "PyTorch is not installed (pip install torch)"
        return True, ""

    def activate_impl(self) -> None:
        import torch

        cuda = torch.cuda.is_available() and self.requested_device != "cpu"
        if not cuda and (self.requested_device == "cuda" or self.requested_precision == "fp16"):
            raise BackendUnavailableError(f"torch backend: no CUDA GPU is visible to PyTorch {torch.__version__} "
                                          f"(built for CUDA {torch.version.cuda}); "
                                          + ("FP16 needs one" if self.requested_precision == "fp16" else "device='cuda'"))
        path = self.bundle.file("torch")
        if self.bundle.precision != "fp32":
            raise BackendUnavailableError(
                f"bundle {self.bundle.path} is {self.bundle.precision} (for ONNX Runtime); "
                "the torch backend runs FP32 bundles")
        if path is None or not path.is_file():
            raise BackendUnavailableError(
                f"bundle {self.bundle.path} has no PyTorch program (model.pt2); re-export it without --no-torch"
            )
        data = self.bundle.verified_member("torch")  # its manifest sha256 and, when signed, the files table
        program = torch.export.load(io.BytesIO(data))  # the bytes just checked
        if cuda:
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, "cuda")
        self.module = program.module()
        self.torch_device = torch.device("cuda" if cuda else "cpu")
        if cuda and self.requested_precision != "fp32":
            self.precision, self.precision_note = "fp16", "CUDA autocast FP16 (reductions such as the heatmap's sum in FP32)"
        elif cuda:
            off, self.precision_note = tf32.torch_tf32_off(torch)
            self.precision = "fp32" if off else "tf32"
        else:
            self.precision, self.precision_note = "fp32", "CPU FP32"
        if not cuda:
            # NHWC convolutions are several times faster on CPU than the default NCHW
            self.module = self.module.to(memory_format=torch.channels_last)
        self.device = f"CUDA:{torch.cuda.current_device()} {torch.cuda.get_device_name()}" if cuda else "CPU"

    def infer_impl(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.torch_device, non_blocking=True)
            if self.precision == "fp16":
                # autocast keeps reductions such as the CAM's channel sum in FP32
                # (https://pytorch.org/docs/stable/amp.html#cuda-ops-that-can-autocast-to-float32)
                with torch.autocast("cuda", dtype=torch.float16):
                    logits, cam = self.module(x)
            else:
                logits, cam = self.module(x)
            return logits.float().cpu().numpy(), cam.float().cpu().numpy()

    def deactivate_impl(self) -> None:
        self.module = None
