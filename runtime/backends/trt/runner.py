"""TensorRT backend: runs the bundle's plan (built on first use, then cached) through pycuda.

``tensorrt`` and ``pycuda`` are imported only inside functions: this module imports anywhere, and
:meth:`TensorRTBackend.availability` says what is missing instead of raising.

Threading. A CUDA context is current per host thread, and pycuda streams and memory belong to the
context that made them. Touching them from a thread where that context is not current fails with
"explicit_context_dependent failed: invalid device context - no currently active context?" - the
Flask-on-Jetson report in NVIDIA/TensorRT issue #475 - and a thread that ends with a pycuda context
still pushed aborts the process ("PyCUDA ERROR: The context stack was not empty upon module
cleanup", NVIDIA/TensorRT issue #1107; the check is in pycuda src/cpp/cuda.hpp). TensorRT's execution
context is not safe for concurrent use either. So the Flask threads never touch pycuda or TensorRT:
one dedicated worker thread (:class:`CudaThread`) retains and pushes the GPU's primary context,
makes every pycuda/TensorRT call - deserialising, allocating, copying, executing, freeing - and pops
the context before it ends. Other threads hand it jobs through a queue and wait for the results, so
concurrent requests are served one at a time. (availability() only calls pycuda's ``init`` and
``Device.count``, which need no context.)

Register as ``"tensorrt": "hipcad.runtime.backends.trt.runner:TensorRTBackend"``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hipcad.runtime.backends.base import Backend, in_batches
from hipcad.runtime.backends.trt import builder as engine_build
from hipcad.runtime.backends.trt import plan_cache as engine_cache
from hipcad.runtime.backends.trt.builder import DEFAULT_WORKSPACE_MB, INPUT, OUTPUTS, PYCUDA_MISSING, TENSORRT_MISSING
from hipcad.runtime.backends.trt.cuda_thread import CudaThread
from hipcad.runtime.errors import BackendUnavailableError, HipcadError

if TYPE_CHECKING:
    from hipcad.runtime.model.bundle import Bundle

log = logging.getLogger(__name__)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, bundle: "Bundle", *, precision: str | None = None, max_batch: int = 2,
                 cache_dir: str | Path | None = None, version_compatible: bool = False, allow_build: bool = True,
                 device_index: int = 0, workspace_mb: int = DEFAULT_WORKSPACE_MB) -> None:
        """``precision`` None: fp16 where TensorRT supports it (10.x), else fp32. ``allow_build`` False:
        refuse, with the reasons, when no valid plan is cached instead of building one (minutes)."""
        super().__init__(bundle)
        self.requested_precision = precision
        self.max_batch = max_batch
        self.cache_dir = cache_dir
        self.version_compatible = version_compatible
        self.allow_build = allow_build
        self.device_index = device_index
        self.workspace_mb = workspace_mb
        self.plan_path: Path | None = None
        self._cuda: CudaThread | None = None
        self._session: _Session | None = None  # created, used and released on the CUDA thread only

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return False, TENSORRT_MISSING
        except Exception as err:  # e.g. OSError: the wheel is there, libnvinfer is not
            return False, f"TensorRT is installed but cannot be loaded ({err})"
        try:
            import pycuda.driver as cuda
        except ImportError:
            return False, PYCUDA_MISSING
        except Exception as err:
            return False, f"pycuda is installed but cannot be loaded ({err})"
        try:
            cuda.init()
            count = cuda.Device.count()
        except Exception as err:  # pycuda.driver.Error: no driver, driver too old...
            return False, f"no usable NVIDIA GPU: the CUDA driver failed ({err})"
        return (True, "") if count else (False, "no NVIDIA GPU found")

    # -- life cycle (caller's thread) -------------------------------------------------------
    def activate_impl(self) -> None:
        if self.bundle.precision != "fp32":
            raise BackendUnavailableError(
                f"bundle {self.bundle.path} is {self.bundle.precision} (made by `hipcad quantize` for "
                "ONNX Runtime on CPUs); TensorRT builds its FP16 engine from the FP32 bundle")
        self._cuda = CudaThread(self.device_index, on_stop=self._release)
        try:
            self._cuda.run(self._load)
        except BaseException:
            self.deactivate_impl()
            raise

    def infer_impl(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(batch) == 0:
            return np.zeros((0, 2), np.float32), np.zeros((0, *self._session.cam_hw), np.float32)
        return in_batches(lambda part: self._cuda.run(self._execute, part), batch, self.max_batch)

    def deactivate_impl(self) -> None:
        if self._cuda is not None:
            self._cuda.stop()  # runs _release on the CUDA thread, then pops the context
            self._cuda = None

    # -- on the CUDA thread -----------------------------------------------------------------
    def _load(self) -> None:
        import pycuda.driver as cuda
        import tensorrt as trt

        gpu = engine_build.query_gpu(self.device_index)
        precision = engine_build.resolve_precision(self.requested_precision, trt)
        options = dict(max_batch=self.max_batch, version_compatible=self.version_compatible)
        problems: list[str] = []
        plan = engine_cache.lookup(self.bundle, gpu, trt.__version__, precision, cache_dir=self.cache_dir,
                                   problems=problems, **options)
        if plan is None and not self.allow_build:
            raise BackendUnavailableError(
                f"no usable TensorRT plan for {self.bundle.name} on {gpu.name} (TensorRT {trt.__version__}, "
                f"{precision}): {'; '.join(problems) or 'none has been built'}; build one (engine_build.build_engine)"
            )
        if plan is None:
            plan = engine_build.build_engine(self.bundle, precision, workspace_mb=self.workspace_mb,
                                             cache_dir=self.cache_dir, gpu=gpu, **options)
        key = engine_cache.EngineKey.make(self.bundle, gpu, trt.__version__, precision, **options)
        data, record = engine_cache.read_plan(plan, key, trt.__version__)  # deserialize the bytes just verified

        runtime = trt.Runtime(engine_build.tensorrt_logger(trt))
        if self.version_compatible:
            # version-compatible plans embed a lean runtime (host code); allowed only for this plan, whose
            # bytes match the sidecar we wrote (developer guide "Version Compatibility"; IRuntime docs)
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendUnavailableError(f"TensorRT could not load plan {plan} (see its messages above); "
                                          "delete the plan and its .json to rebuild it")
        # I/O by name (ICudaEngine.num_io_tensors / get_tensor_name / get_tensor_mode / get_tensor_dtype)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        found = {n: (engine.get_tensor_mode(n), engine.get_tensor_dtype(n)) for n in names}
        wanted = {INPUT: (trt.TensorIOMode.INPUT, trt.uint8),
                  **{n: (trt.TensorIOMode.OUTPUT, trt.float32) for n in OUTPUTS}}
        if found != wanted:
            raise BackendUnavailableError(f"TensorRT plan {plan} does not have the bundle's inputs and outputs: {found}")

        context = engine.create_execution_context()  # one context, used only on this thread
        max_input = tuple(engine.get_tensor_profile_shape(INPUT, 0)[2])  # (min, opt, max) of profile 0
        if not context.set_input_shape(INPUT, max_input):
            raise BackendUnavailableError(f"TensorRT plan {plan} refused its own largest input shape {list(max_input)}")
        host, device = {}, {}
        for name in names:  # page-locked host + device buffers for the largest batch, reused by every call
            shape, dtype = tuple(context.get_tensor_shape(name)), trt.nptype(engine.get_tensor_dtype(name))
            host[name] = cuda.pagelocked_empty(shape, dtype)
            device[name] = cuda.mem_alloc(host[name].nbytes)
        # a stream of our own: execute_async_v3 on the default stream costs "additional cudaDeviceSynchronize()
        # calls" (IExecutionContext.execute_async_v3 docstring, pyCoreDoc.h)
        self._session = _Session(runtime, engine, context, cuda.Stream(), host, device)
        self.max_batch = max_input[0]
        self.plan_path = plan
        self.precision, self.precision_note = _precision_from(record)
        self.device = f"CUDA:{self.device_index} {gpu.name}, TensorRT {trt.__version__} {self.precision}"
        self._execute(np.zeros((1, 1, *self.bundle.input_hw), np.uint8))  # warm-up: first run initialises lazily

    def _execute(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import pycuda.driver as cuda

        s, n = self._session, len(batch)
        if not s.context.set_input_shape(INPUT, batch.shape):
            raise HipcadError(f"TensorRT refused input shape {list(batch.shape)}")
        for name, allocation in s.device.items():
            if not s.context.set_tensor_address(name, int(allocation)):
                raise HipcadError(f"TensorRT refused the device address of tensor {name!r}")
        host_in = s.host[INPUT][:n]
        np.copyto(host_in, batch)
        cuda.memcpy_htod_async(s.device[INPUT], host_in, s.stream)  # async copies need page-locked host memory
        if not s.context.execute_async_v3(s.stream.handle):
            raise HipcadError("TensorRT execution failed (see its messages above)")
        outputs = [s.host[name][:n] for name in OUTPUTS]
        for name, out in zip(OUTPUTS, outputs):
            cuda.memcpy_dtoh_async(out, s.device[name], s.stream)
        s.stream.synchronize()
        return tuple(out.copy() for out in outputs)  # the host buffers are reused by the next call

    def _release(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


def _precision_from(record: dict) -> tuple[str, str]:
    """The plan's precision, and how it is known, from its sidecar (written by the builder after it
    inspected the engine)."""
    precision, heatmap = record["key"]["precision"], record.get("heatmap", {})
    if precision == "fp32":
        return "fp32", "TensorRT FP32, TF32 off (builder flag cleared and read back)"
    rows = heatmap.get("layers", [])
    fp32 = sum(row["precision"] in ("fp32", "folded") for row in rows)
    if heatmap.get("verified"):
        return "fp16", f"TensorRT FP16; heatmap layers FP32 in the built engine ({fp32}/{len(rows)}, inspected)"
    log.warning("TensorRT plan's heatmap layers are not all FP32 (%d/%d); it was stored with --allow-unverified-heatmap",
                fp32, len(rows))
    return "fp16", f"TensorRT FP16; heatmap NOT verified FP32 ({fp32}/{len(rows)} layers FP32 in the engine)"


@dataclass
class _Session:
    """TensorRT objects and pycuda buffers of one activation; all belong to the CUDA thread."""

    runtime: Any
    engine: Any
    context: Any
    stream: Any
    host: dict[str, np.ndarray]
    device: dict[str, Any]

    @property
    def cam_hw(self) -> tuple[int, int]:
        return tuple(self.host["cam"].shape[1:])

    def close(self) -> None:
        """Free everything while the CUDA context is still current: execution context before engine
        before runtime, then the buffers (pycuda ``DeviceAllocation.free``, ``PagelockedHostAllocation.free``
        via the array's ``base``, doc/driver.rst)."""
        self.stream.synchronize()
        self.context = self.engine = self.runtime = None
        for allocation in self.device.values():
            allocation.free()
        for array in self.host.values():
            array.base.free()
        self.stream = None
