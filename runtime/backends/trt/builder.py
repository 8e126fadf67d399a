"""Build a TensorRT plan from a bundle's ONNX graph with the TensorRT 10 builder.

``tensorrt`` (and ``pycuda``, for the GPU's name) are imported inside the functions, so this module
imports on any machine. The Python API used here is documented in the TensorRT Python API reference
(docs.nvidia.com/deeplearning/tensorrt, "Core" and "Network" pages); where the reference is terse the
comments name the binding docstrings in github.com/NVIDIA/TensorRT ``python/docstrings/infer/*.h``.

Precision: FP16 uses TensorRT 10's weak typing (``BuilderFlag.FP16``, deprecated since 10.12 and
removed in TensorRT 11, whose networks are always strongly typed - "Migrating from TensorRT 10.x to
11.x"). With TensorRT 11 only ``fp32`` can be built from our FP32 ONNX, and ``precision=None``
picks that. TF32 is off in every plan. What an FP16 plan computes in FP16 and what in FP32: the
layers that compute only the heatmap are pinned to FP32 and checked in the built engine
(:mod:`.inspector`); everything the heatmap shares with the classifier - the whole network up to and
including the last feature map - runs in FP16, so the heatmap is FP32 arithmetic on an FP16 feature map.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from hipcad.runtime.backends.trt import inspector
from hipcad.runtime.backends.trt import plan_cache as engine_cache
from hipcad.runtime.backends.trt.plan_cache import PRECISIONS, GpuInfo
from hipcad.runtime.durable import atomic_write
from hipcad.runtime.errors import EngineBuildError

if TYPE_CHECKING:
    from hipcad.runtime.model.bundle import Bundle

INPUT = "image"
OUTPUTS = ("logits", "cam")
DEFAULT_WORKSPACE_MB = 1024
TENSORRT_MISSING = ("TensorRT Python package is not installed (pip install hipcad[tensorrt] on an NVIDIA box; "
                    "on Jetson it comes with JetPack)")
PYCUDA_MISSING = ("pycuda is not installed (pip install hipcad[tensorrt] on an NVIDIA box; "
                  "on Jetson: pip install pycuda against JetPack's CUDA)")


_logger: dict = {}
_logger_lock = threading.Lock()


def tensorrt_logger(trt):
    """The one ``trt.Logger`` of the process, shared by every Builder and Runtime (older TensorRT kept
    only the first logger it was given and warned about the others; Polygraphy does the same)."""
    with _logger_lock:
        if _logger.get("module") is not trt:  # another tensorrt module (the tests' fake): a logger of its own
            _logger.update(module=trt, logger=trt.Logger(trt.Logger.WARNING))  # warnings and errors to stdout
        return _logger["logger"]


def import_tensorrt():
    try:
        import tensorrt
    except (ImportError, OSError) as err:  # OSError: the wheel is there but libnvinfer is not
        raise EngineBuildError(f"{TENSORRT_MISSING}: {err}") from err
    return tensorrt


def query_gpu(device_index: int = 0) -> GpuInfo:
    """Name and compute capability of a CUDA device (pycuda doc/driver.rst: ``init``, ``Device.name``,
    ``Device.compute_capability``). Needs no CUDA context, so any thread may call it."""
    import pycuda.driver as cuda

    cuda.init()
    device = cuda.Device(device_index)
    return GpuInfo(device.name(), tuple(device.compute_capability()))


def resolve_precision(precision: str | None, trt) -> str:
    """``None`` means fp16 where this TensorRT still has weak typing (10.x), else fp32."""
    weakly_typed = hasattr(trt.BuilderFlag, "FP16")
    if precision is None:
        return "fp16" if weakly_typed else "fp32"
    if precision not in PRECISIONS:
        raise EngineBuildError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and not weakly_typed:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} has no FP16 builder flag (weak typing was removed in TensorRT 11); "
            "build with precision='fp32', or use TensorRT 10.x for an FP16 plan"
        )
    return precision


def build_engine(bundle: "Bundle", precision: str | None = "fp16", max_batch: int = 2,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB, version_compatible: bool = False,
                 cache_dir: str | Path | None = None, progress: bool = True, gpu: GpuInfo | None = None,
                 deadline: float | None = None, allow_unverified_heatmap: bool = False) -> Path:
    """Build, store (via :mod:`engine_cache`, atomically) and return the path of a plan for ``bundle``.

    One optimisation profile covers input ``image`` [1..max_batch, 1, H, W] (optimum 2, the two hips
    of a radiograph). In FP16 the layers that compute only ``cam`` are pinned to FP32
    (:func:`keep_cam_fp32`), and the built engine is inspected: when one of them is not FP32 the
    plan is not stored and EngineBuildError says which, unless ``allow_unverified_heatmap`` (then the
    sidecar says so and a warning is printed). The timing cache beside the plans is loaded first and
    saved after, so rebuilds on the same GPU skip most tactic timing. ``gpu`` defaults to CUDA device
    0. ``deadline`` (time.monotonic()): the build is cancelled once it passes.
    """
    trt = import_tensorrt()
    precision = resolve_precision(precision, trt)
    if max_batch < 1:
        raise EngineBuildError(f"max_batch must be at least 1, got {max_batch}")
    gpu = gpu or query_gpu()
    key = engine_cache.EngineKey.make(bundle, gpu, trt.__version__, precision, max_batch=max_batch,
                                      version_compatible=version_compatible)
    say = _stderr if progress else (lambda message: None)
    say(f"building TensorRT {trt.__version__} {precision} plan for {bundle.name} on {gpu.name} "
        f"(batch 1..{max_batch}); this takes minutes")

    logger = tensorrt_logger(trt)
    builder = trt.Builder(logger)
    # 0: explicit batch is the only mode in TensorRT 10 (NetworkDefinitionCreationFlag.EXPLICIT_BATCH is
    # "Ignored because networks are always explicit batch", python/docstrings/infer/pyCoreDoc.h)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(bundle.verified_onnx_bytes, str(bundle.onnx_path)):
        # IParserError: code(), desc(), node(), node_name(), node_operator() (python/src/parsers/pyOnnx.cpp)
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT cannot parse {bundle.onnx_path}:\n" + "\n".join(
            f"  node {e.node()} {e.node_name()!r} ({e.node_operator()}): {e.desc()} [{e.code()}]" for e in errors))
    _check_io(trt, network)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    # FP32 means FP32: TF32, "Enabled by default", "computes inner products by rounding the inputs to 10-bit
    # mantissas" (BuilderFlag.TF32 docstring, pyCoreDoc.h); it would loosen the fp32 plan and the FP32 CAM layers
    config.clear_flag(trt.BuilderFlag.TF32)
    if config.get_flag(trt.BuilderFlag.TF32):
        raise EngineBuildError("TensorRT kept BuilderFlag.TF32 set after clear_flag; refusing a plan whose FP32 may be TF32")
    # DETAILED: the engine inspector then shows every layer's formats (default LAYER_NAMES_ONLY shows names)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    height, width = bundle.input_hw
    opt = (min(2, max_batch), 1, height, width)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, (1, 1, height, width), opt, (max_batch, 1, height, width))
    if config.add_optimization_profile(profile) < 0:  # -1: "the profile is invalid" (IBuilderConfig docs)
        raise EngineBuildError(f"TensorRT refused the optimisation profile for {INPUT} "
                               f"(batch 1..{max_batch}, {height}x{width})")
    pinned: list[dict] = []
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = keep_cam_fp32(trt, network)
        # OBEY, not PREFER: BuilderFlag docs (pyCoreDoc.h) - OBEY: "Require that layers execute in specified
        # precisions. Build fails otherwise."; PREFER: "Fall back (with warning) to another precision". A CAM
        # silently reduced in FP16 must not ship, so a build that cannot honour the pins has to fail.
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        say(f"pinned {len(pinned)} heatmap layer(s) to FP32: {', '.join(p['layer'] for p in pinned)}")
    if version_compatible:
        # plan runs on later TensorRT runtimes; loading it needs Runtime.engine_host_code_allowed
        # (developer guide "Version Compatibility")
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    timing_path = engine_cache.timing_cache_path(bundle, gpu, trt.__version__, cache_dir)
    _attach_timing_cache(config, timing_path, say)
    monitor = _progress_monitor(trt, progress, deadline) if progress or deadline is not None else None
    if monitor is not None:
        config.progress_monitor = monitor  # must outlive the build: kept referenced until we return

    start = time.monotonic()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        late = deadline is not None and time.monotonic() > deadline
        raise EngineBuildError(f"TensorRT build of {bundle.onnx_path} " + ("cancelled: past its time limit" if late else
                                                                           "failed (see its messages above)"))
    seconds = time.monotonic() - start
    timing_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(timing_path, memoryview(config.get_timing_cache().serialize()))
    heatmap = inspector.inspect_plan(trt, logger, plan, opt, INPUT, pinned, host_code_allowed=version_compatible)
    _judge_heatmap(heatmap, precision, allow_unverified_heatmap, say)
    flags = [name for name, flag in trt.BuilderFlag.__members__.items() if config.get_flag(flag)]
    path = engine_cache.write_plan(bundle, key, plan, trt_version=trt.__version__, cache_dir=cache_dir, extra={
        "build_seconds": round(seconds, 1), "tf32": False, "profiling_verbosity": "DETAILED", "builder_flags": flags,
        "heatmap": heatmap})
    say(f"TensorRT plan written to {path} ({seconds:.0f} s)")
    return path


def _judge_heatmap(heatmap: dict, precision: str, allow_unverified: bool, say) -> None:
    """An FP16 plan whose pinned heatmap layers are not all FP32 in the engine is refused (or, when
    allowed, stored with a loud warning); an FP32 plan is FP32 throughout, so nothing is pinned."""
    say(f"engine: {heatmap['engine_layers']} layers by precision {heatmap['engine_precisions']}")
    if precision != "fp16":
        return
    bad = [row for row in heatmap["layers"] if row["precision"] not in ("fp32", "folded")]
    for row in heatmap["layers"]:
        say(f"  heatmap layer {row['layer']}: {row['precision']} in engine layer(s) {row['engine_layers'] or '-'}")
    if not bad:
        say(f"all {len(heatmap['layers'])} pinned heatmap layer(s) are FP32 in the built engine")
        return
    listing = "; ".join(f"{row['layer']} is {row['precision']} (engine layers: {', '.join(row['engine_layers']) or 'none'})"
                        for row in bad)
    if not allow_unverified:
        raise EngineBuildError(f"TensorRT did not keep the heatmap in FP32 although the layers were pinned: {listing}. "
                               "The plan was not stored; build with --fp32, or --allow-unverified-heatmap to accept it")
    message = f"FP16 plan stored although its heatmap is not verified FP32: {listing}"
    say("WARNING: " + message)
    warnings.warn(message, stacklevel=3)


def keep_cam_fp32(trt, network) -> list[dict]:
    """Pin the layers that compute ``cam`` and not ``logits`` to FP32; return them
    (``{"layer": name, "type": LayerType name, "onnx_node": the ONNX node it came from, if known}``).

    Those are the ancestors of the ``cam`` output that are not ancestors of ``logits``: everything after
    the last feature-map activation the two heads share - the channel reduction sum_k w_k A_k
    (MatMul/Conv/Reduce), ReLU, division by h*w, reshapes and the weights feeding them. Each gets
    ``layer.precision`` and ``set_output_type`` float32 (ILayer docs; they bind only together with
    OBEY/PREFER_PRECISION_CONSTRAINTS). Layers producing shape or integer tensors are left alone.
    Raises EngineBuildError when no channel reduction is found, so FP16 never ships an unpinned CAM.
    """
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    producer = {layer.get_output(k).name: i for i, layer in enumerate(layers) for k in range(layer.num_outputs)}

    def ancestors(tensor_name: str) -> set[int]:
        found, todo = set(), [tensor_name]
        while todo:
            index = producer.get(todo.pop())
            if index is None or index in found:  # a network input, or seen
                continue
            found.add(index)
            layer = layers[index]
            todo.extend(t.name for t in map(layer.get_input, range(layer.num_inputs)) if t is not None)
        return found

    floating = (trt.float32, trt.float16)
    reductions = {getattr(trt.LayerType, name) for name in ("MATRIX_MULTIPLY", "CONVOLUTION", "REDUCE", "EINSUM")
                  if hasattr(trt.LayerType, name)}
    pinned, reduced = [], False
    for index in sorted(ancestors("cam") - ancestors("logits")):
        layer = layers[index]
        outputs = [layer.get_output(k) for k in range(layer.num_outputs)]
        if layer.type == trt.LayerType.SHAPE or any(t.is_shape_tensor or t.dtype not in floating for t in outputs):
            continue
        layer.precision = trt.float32
        for k in range(layer.num_outputs):
            layer.set_output_type(k, trt.float32)
        # the ONNX node: "[ONNX Layer: <node>]" where the parser sets the metadata, else the layer's name (which
        # the parser takes from the node)
        node = inspector.METADATA.findall(layer.metadata)
        pinned.append({"layer": layer.name, "type": layer.type.name, "onnx_node": node[0] if node else layer.name})
        reduced = reduced or layer.type in reductions
    if not reduced:
        raise EngineBuildError(
            "cannot find the CAM's channel reduction (a MatMul/Conv/Reduce feeding only `cam`) in the network; "
            "refusing an FP16 build whose heatmap would not be computed in FP32 (build with precision='fp32')"
        )
    return pinned


def _check_io(trt, network) -> None:
    inputs = {t.name: t.dtype for t in map(network.get_input, range(network.num_inputs))}
    outputs = {t.name: t.dtype for t in map(network.get_output, range(network.num_outputs))}
    if inputs != {INPUT: trt.uint8} or outputs != {name: trt.float32 for name in OUTPUTS}:
        raise EngineBuildError(
            f"the ONNX graph must take {INPUT} uint8 and give {' and '.join(OUTPUTS)} float32; it has inputs "
            f"{ {n: str(d) for n, d in inputs.items()} } and outputs { {n: str(d) for n, d in outputs.items()} }"
        )


def _attach_timing_cache(config, path: Path, say) -> None:
    """Load the persistent timing cache into the config, or start an empty one.

    ``create_timing_cache(b"")`` makes a new cache; ``set_timing_cache(cache, ignore_mismatch=False)``
    refuses a cache from another device (pyCoreDoc.h, IBuilderConfig.create_timing_cache/set_timing_cache;
    Polygraphy backend/trt/config.py does the same).
    """
    data = path.read_bytes() if path.is_file() else b""
    try:
        attached = config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False)
    except Exception:  # a truncated or foreign file
        attached = False
    if not attached:
        say(f"timing cache {path} does not fit this GPU/TensorRT; starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _progress_monitor(trt, verbose: bool, deadline: float | None):
    """A ``trt.IProgressMonitor`` (TensorRT >= 10.0) printing build phases and steps to stderr
    (``verbose``) and cancelling the build once ``deadline`` (time.monotonic()) has passed.

    Python API "ProgressMonitor": phase_start(phase_name, parent_phase, num_steps), step_complete(
    phase_name, step) -> bool (False cancels the build), phase_finish(phase_name); "must be thread-safe
    so that it can be called from multiple internal threads". After samples/python/simple_progress_monitor.
    TensorRT calls it from its own threads, so Ctrl-C (delivered to the main thread) cannot reach it.
    """
    say = _stderr if verbose else (lambda message: None)

    class BuildProgress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._phases: dict[str, tuple[int, int]] = {}  # name -> (depth, steps)

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                depth = self._phases.get(parent_phase, (-1, 0))[0] + 1 if parent_phase else 0
                self._phases[phase_name] = (depth, num_steps)
                say(f"{'  ' * depth}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            if deadline is not None and time.monotonic() > deadline:
                say(f"{phase_name}: past the time limit, cancelling the build")
                return False
            with self._lock:
                depth, steps = self._phases.get(phase_name, (0, 0))
                if steps >= 10 and (step + 1) % (steps // 10) == 0:
                    say(f"{'  ' * depth}{phase_name}: {step + 1}/{steps}")
            return True

        def phase_finish(self, phase_name):
            with self._lock:
                depth = self._phases.pop(phase_name, (0, 0))[0]
                say(f"{'  ' * depth}{phase_name}: done")

    return BuildProgress()


def _stderr(message: str) -> None:
    print(f"[hipcad tensorrt] {message}", file=sys.stderr, flush=True)
