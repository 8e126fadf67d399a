"""Fake build, plan (de)serialisation, engine, execution context and engine inspector.

Plan format (fake): b"fTRT" + uint32 header length + JSON header + the ONNX model bytes.
"""

from __future__ import annotations

import json
import struct
import sys
import threading

import numpy as np

from . import (
    FAKE,
    RECORD,
    BuilderFlag,
    DataType,
    Dims,
    ExecutionContextAllocationStrategy,
    HardwareCompatibilityLevel,
    IHostMemory,
    LayerInformationFormat,
    LayerType,
    ProfilingVerbosity,
    Severity,
    TensorIOMode,
    TensorLocation,
    _builtin_bool,
    _check,
    _current_device,
    _dims,
    _int,
    _log,
    _monitor_call,
    _no_init,
    _Strict,
    _version_tuple,
)

MAGIC = b"fTRT"
FLOATS = (DataType.FLOAT, DataType.HALF, DataType.BF16)
POINTWISE = (LayerType.ELEMENTWISE, LayerType.ACTIVATION, LayerType.UNARY)
# engine "LayerType" / "ParameterType" strings (trex examples: CaskConvolution/Convolution, Reformat, CudaPooling/Pooling,
# PointWiseV2/PointWise, Constant, MatrixMultiply...); the fake's choice, shaped like TensorRT's
ENGINE_TYPES = {
    LayerType.CONVOLUTION: ("CaskConvolution", "Convolution"), LayerType.DECONVOLUTION: ("CaskDeconvolution", "Deconvolution"),
    LayerType.ACTIVATION: ("PointWiseV2", "PointWise"), LayerType.ELEMENTWISE: ("PointWiseV2", "PointWise"),
    LayerType.UNARY: ("PointWiseV2", "PointWise"), LayerType.REDUCE: ("Reduce", "Reduce"),
    LayerType.POOLING: ("CudaPooling", "Pooling"), LayerType.MATRIX_MULTIPLY: ("MatrixMultiply", "MatrixMultiply"),
    LayerType.SHUFFLE: ("Shuffle", "Shuffle"), LayerType.CAST: ("Cast", "Cast"), LayerType.CONSTANT: ("Constant", "Constant"),
    LayerType.SOFTMAX: ("Softmax", "Softmax"), LayerType.CONCATENATION: ("Concatenation", "Concatenation"),
}
# "Format/Datatype" strings: classic layers use the trex-documented strings (trex/activations.py _regionFormatDict),
# Myelin/kgen layers the short ones ("Float", "Half", ...), as TensorRT 10 prints them
CLASSIC_FORMAT = {"FLOAT": "Row major linear FP32", "HALF": "Row major linear FP16 format", "INT32": "Row major linear Int32",
                  "INT64": "Row major linear Int64 format", "UINT8": "Row major linear UInt8 format",
                  "BOOL": "Row major linear BOOL", "INT8": "Row major Int8 format", "BF16": "Row major linear BFloat16 format"}
KGEN_FORMAT = {"FLOAT": "Float", "HALF": "Half", "INT32": "Int32", "INT64": "Int64", "UINT8": "UInt8", "BOOL": "Bool",
               "INT8": "Int8", "BF16": "BFloat16"}


def _trt_version() -> str:
    return sys.modules[__package__].__version__  # read at call time: tests may change tensorrt.__version__


def _err(logger, msg):
    _log(logger, Severity.ERROR, msg)
    return None


# -- build --------------------------------------------------------------------------------------
def build(builder, network, config):
    logger = builder._logger
    if FAKE.build_fails:
        return _err(logger, "fake tensorrt: FAKE.build_fails is set")
    if network._parsed is None:
        return _err(logger, "fake tensorrt: only networks populated by OnnxParser can be built")
    if not network._outputs:
        return _err(logger, "Network must have at least one output")
    inputs = {t._name: t for t in network._inputs}
    dynamic = [t for t in network._inputs if any(d < 0 for d in t._shape)]
    if dynamic and not config._profiles:
        return _err(logger, "Error Code 4: API Usage Error (Network has dynamic or shape inputs, but no optimization "
                            "profile has been defined.)")
    for index, profile in enumerate(config._profiles):
        for name, shapes in profile._shapes.items():
            if name not in inputs:
                return _err(logger, f"Error Code 4: API Usage Error (optimization profile {index}: {name} is not an input "
                                    "of the network)")
            static = inputs[name]._shape
            for shape in shapes:
                if len(shape) != len(static) or any(s != d for s, d in zip(static, shape) if s >= 0):
                    return _err(logger, f"Error Code 4: API Usage Error (optimization profile {index}: shape {list(shape)} "
                                        f"of {name} does not match the network dimensions {list(static)})")
        for t in dynamic:
            if t._name not in profile._shapes:
                return _err(logger, f"Error Code 4: API Usage Error (optimization profile {index} has no shape for "
                                    f"dynamic input {t._name})")

    has = config._has
    fp16, obey, prefer = has(BuilderFlag.FP16), has(BuilderFlag.OBEY_PRECISION_CONSTRAINTS), has(BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    if fp16 and not FAKE.platform_has_fast_fp16:
        _log(logger, Severity.WARNING, "Half2 support requested on hardware without native FP16 support, performance "
                                       "will be negatively affected.")

    # per network layer: the precision it runs in
    precision, ignored_pins = {}, []
    for layer in network._layers:
        outs = [network._tensors[o] for o in layer._outputs]
        floating = outs and all(t._dtype in FLOATS for t in outs) and layer._type is not LayerType.SHAPE
        if not floating:
            precision[layer._name] = outs[0]._dtype if outs else DataType.FLOAT
            continue
        prec = DataType.HALF if fp16 else DataType.FLOAT
        pinned = layer._precision_set or bool(layer._output_types)
        if pinned and (obey or prefer):
            want = layer._precision if layer._precision_set else DataType.FLOAT
            if layer._name in FAKE.unsatisfiable_pins or (want is DataType.HALF and not fp16):
                if obey:
                    return _err(logger, f"Error Code 10: Internal Error (Could not find any implementation for node "
                                        f"{layer._name} that obeys the requested precision constraints.)")
                _log(logger, Severity.WARNING, f"No implementation of layer {layer._name} obeys the requested constraints. "
                                               "Using the fastest implementation instead.")
            else:
                prec = want
        elif pinned:
            ignored_pins.append(layer._name)
        precision[layer._name] = prec
    if ignored_pins:
        _log(logger, Severity.WARNING, "fake tensorrt: precision set on layers without OBEY/PREFER_PRECISION_CONSTRAINTS "
                                       f"is ignored: {', '.join(ignored_pins)}")

    groups = _group_layers(network, precision, fp16)
    engine_layers = _engine_layers(network, groups, precision)

    monitor = config._progress_monitor
    if monitor is not None and not _run_monitor(monitor, len(network._layers)):
        return _err(logger, "Error Code 2: Internal Error (Build cancelled by the progress monitor.)")

    if config._timing_cache is not None:
        config._timing_cache._entries += len(engine_layers)
    vc = has(BuilderFlag.VERSION_COMPATIBLE)
    header = {
        "fake_plan": 1,
        "tensorrt": _trt_version(),
        "device": _current_device(),
        "version_compatible": vc,
        "exclude_lean_runtime": has(BuilderFlag.EXCLUDE_LEAN_RUNTIME),
        "hardware_compatibility_level": config._hw_compat.name,
        "flags": [f.name for f in BuilderFlag if has(f)],
        "tf32": has(BuilderFlag.TF32) and FAKE.platform_has_tf32,
        "profiling_verbosity": config._profiling_verbosity.name,
        "builder_optimization_level": config._opt_level,
        "workspace": config._pools.get(next(iter(config._pools))),
        "io": [{"name": t._name, "mode": "INPUT", "dtype": t._dtype.name, "shape": list(t._shape)} for t in network._inputs]
              + [{"name": t._name, "mode": "OUTPUT", "dtype": t._dtype.name, "shape": list(t._shape)} for t in network._outputs],
        "profiles": [{name: [list(s) for s in shapes] for name, shapes in p._shapes.items()} for p in config._profiles],
        "layer_precision": {name: p.name for name, p in precision.items()},
        "tensor_shapes": {name: list(t._shape) for name, t in network._tensors.items()},
        "engine_layers": engine_layers,
    }
    head = json.dumps(header).encode()
    return IHostMemory(MAGIC + struct.pack("<I", len(head)) + head + network._parsed.onnx_bytes)


def _run_monitor(monitor, n_layers: int) -> bool:
    """Call the monitor from an internal thread, like TensorRT ("must be thread-safe ... called from multiple
    internal threads", IProgressMonitor docs). Phase names are the fake's."""
    result = []

    def body():
        ok = True
        _monitor_call(monitor, "phase_start", "Building engine", None, 2)
        for top_step, (phase, steps) in enumerate((("Optimizing network", 4), ("Selecting tactics", max(n_layers, 10)))):
            _monitor_call(monitor, "phase_start", phase, "Building engine", steps)
            for step in range(steps):
                if not _monitor_call(monitor, "step_complete", phase, step):
                    ok = False
                    break
            _monitor_call(monitor, "phase_finish", phase)
            if not ok or not _monitor_call(monitor, "step_complete", "Building engine", top_step):
                ok = False
                break
        _monitor_call(monitor, "phase_finish", "Building engine")
        result.append(ok)

    worker = threading.Thread(target=body, name="fake-trt-builder")
    worker.start()
    worker.join()
    return result[0]


def _group_layers(network, precision, fp16):
    """Partition the network layers into engine layers according to FAKE.fusion."""
    layers = network._layers
    producer = {o: i for i, layer in enumerate(layers) for o in layer._outputs}
    group_of = {}
    groups: list[list[int]] = []
    last_conv = max((i for i, l in enumerate(layers) if l._type is LayerType.CONVOLUTION), default=-1)
    for i, layer in enumerate(layers):
        gi = None
        if FAKE.fusion == "myelin_tail" and i > last_conv >= 0:
            gi = group_of.get("myelin")
            if gi is None:
                groups.append([])
                gi = group_of["myelin"] = len(groups) - 1
        elif FAKE.fusion == "pointwise" and layer._type in POINTWISE:
            sources = {group_of[producer[t]] for t in layer._inputs
                       if t in producer and layers[producer[t]]._type is not LayerType.CONSTANT}
            if len(sources) == 1:
                g = sources.pop()
                if layers[groups[g][0]]._type in (LayerType.CONVOLUTION, *POINTWISE):
                    gi = g
        if gi is None:
            groups.append([])
            gi = len(groups) - 1
        groups[gi].append(i)
        group_of[i] = gi
    # constants consumed only inside one fused group fold into it
    if FAKE.fusion:
        for gi, members in enumerate(groups):
            if len(members) == 1 and layers[members[0]]._type is LayerType.CONSTANT:
                out = layers[members[0]]._outputs[0]
                consumers = {group_of[j] for j, l in enumerate(layers) if out in l._inputs}
                if len(consumers) == 1 and len(groups[next(iter(consumers))]) > 1:
                    groups[next(iter(consumers))].insert(0, members[0])
                    groups[gi] = []
    return [g for g in groups if g]


def _engine_layers(network, groups, precision):
    layers = network._layers
    outputs = {t._name for t in network._outputs}
    consumed_by = {}
    for gi, members in enumerate(groups):
        for i in members:
            for t in layers[i]._inputs:
                consumed_by.setdefault(t, set()).add(gi)
    result = []
    for gi, members in enumerate(groups):
        member_layers = [layers[i] for i in members]
        produced = [o for l in member_layers for o in l._outputs]
        ins = []
        for l in member_layers:
            for t in l._inputs:
                if t not in produced and t not in ins:
                    ins.append(t)
        outs = [o for o in produced if o in outputs or consumed_by.get(o, set()) - {gi}]
        anchor = next((l for l in member_layers if l._type is not LayerType.CONSTANT), member_layers[0])
        if FAKE.fusion == "myelin_tail" and len(member_layers) > 1 and anchor._type is not LayerType.CONVOLUTION:
            name = f"{{ForeignNode[{member_layers[0]._name}...{member_layers[-1]._name}]}}"
            ltype, ptype, kgen = "Myelin", "Myelin", True
            prec = DataType.HALF if any(precision[l._name] is DataType.HALF for l in member_layers) else precision[anchor._name]
        else:
            parts, pw = [], []
            for l in member_layers:
                if l._type in POINTWISE and len(member_layers) > 1:
                    pw.append(l._name)
                else:
                    if pw:
                        parts.append(f"PWN({', '.join(pw)})")
                        pw = []
                    parts.append(l._name)
            if pw:
                parts.append(f"PWN({', '.join(pw)})")
            name = " + ".join(parts)
            ltype, ptype = ENGINE_TYPES.get(anchor._type, (anchor._type.name.title(), anchor._type.name.title()))
            kgen = False
            prec = precision[anchor._name]
        out_dtype = {}
        for l in member_layers:
            for k, o in enumerate(l._outputs):
                t = network._tensors[o]
                if t._dtype in FLOATS:
                    out_dtype[o] = (l._output_types.get(k) if (l._output_types.get(k) and prec is precision[l._name])
                                    else prec).name
                else:
                    out_dtype[o] = t._dtype.name
        weights = {}
        for l in member_layers:
            for key, count in l._weights.items():
                weights[key] = {"Type": "Half" if prec is DataType.HALF else "Float", "Count": count}
        result.append({"name": name, "layer_type": ltype, "parameter_type": ptype, "kgen": kgen,
                       "members": [l._name for l in member_layers], "precision": prec.name,
                       "metadata": "\x1e".join(l._metadata for l in member_layers if l._metadata),
                       "inputs": ins, "outputs": outs, "out_dtype": out_dtype, "weights": weights})
    # a network output computed in another type than its declared one gets a reformat layer (trex examples:
    # "Reformatting CopyNode for Output Tensor 0 to <layer>")
    final = []
    for el in result:
        final.append(el)
        for k, o in enumerate(list(el["outputs"])):
            if o in outputs and el["out_dtype"][o] != network._tensors[o]._dtype.name:
                renamed = f"Reformatted Output Tensor {k} to {el['name']}"
                el["outputs"][k] = renamed
                el["out_dtype"][renamed] = el["out_dtype"].pop(o)
                final.append({"name": f"Reformatting CopyNode for Output Tensor {k} to {el['name']}", "layer_type": "Reformat",
                              "parameter_type": "Reformat", "kgen": False, "members": [], "precision": el["out_dtype"][renamed],
                              "metadata": "", "inputs": [renamed], "outputs": [o], "alias_of": {renamed: o},
                              "out_dtype": {o: network._tensors[o]._dtype.name}, "weights": {}, "origin": "REFORMAT"})
    return final


# -- deserialise --------------------------------------------------------------------------------
def deserialize(runtime, data: bytes):
    logger = runtime._logger
    if not data.startswith(MAGIC) or len(data) < 8:
        return _err(logger, "Error Code 1: Serialization (Serialization assertion magicTagRead == kMAGIC_TAG failed."
                            "Magic tag does not match)")
    (n,) = struct.unpack("<I", data[4:8])
    try:
        header = json.loads(data[8:8 + n])
        onnx_bytes = data[8 + n:]
    except ValueError:
        return _err(logger, "Error Code 1: Serialization (fake plan header is corrupt)")
    built = header["tensorrt"]
    if header["version_compatible"]:
        if _version_tuple(built) > _version_tuple(_trt_version()):
            return _err(logger, f"The engine plan file is not compatible with this version of TensorRT, expecting library "
                                f"version {_trt_version()} or later engine, got {built}")
        if not header["exclude_lean_runtime"] and not runtime._host_code_allowed:
            return _err(logger, "fake tensorrt: this version-compatible plan contains host code (the lean runtime); "
                                "set Runtime.engine_host_code_allowed = True to load it")
    elif built != _trt_version():
        return _err(logger, f"The engine plan file is not compatible with this version of TensorRT, expecting library "
                            f"version {_trt_version()} got {built}, please rebuild.")
    if header["device"] != _current_device() and header["hardware_compatibility_level"] == "NONE":
        return _err(logger, f"The engine plan file is generated on an incompatible device, expecting compute "
                            f"{'.'.join(map(str, _current_device()[1]))} got compute "
                            f"{'.'.join(map(str, header['device'][1]))}, please rebuild.")
    return ICudaEngine._make(runtime, header, onnx_bytes)


class ICudaEngine(_Strict):
    __slots__ = ("_runtime", "_h", "_onnx", "_io", "_lock", "_sessions", "_shape_cache")
    __init__ = _no_init("ICudaEngine")

    @classmethod
    def _make(cls, runtime, header, onnx_bytes):
        e = object.__new__(cls)
        e._runtime, e._h, e._onnx = runtime, header, onnx_bytes
        e._io = {t["name"]: t for t in header["io"]}
        e._lock, e._sessions, e._shape_cache = threading.Lock(), {}, {}
        return e

    num_io_tensors = property(lambda self: len(self._h["io"]))
    num_layers = property(lambda self: len(self._h["engine_layers"]))
    num_optimization_profiles = property(lambda self: len(self._h["profiles"]))
    name = property(lambda self: "Unnamed Network 0")
    refittable = property(lambda self: False)
    profiling_verbosity = property(lambda self: ProfilingVerbosity[self._h["profiling_verbosity"]])
    hardware_compatibility_level = property(lambda self: HardwareCompatibilityLevel[self._h["hardware_compatibility_level"]])
    num_aux_streams = property(lambda self: 0)
    device_memory_size_v2 = property(lambda self: 1 << 20)

    def get_tensor_name(self, index):
        index = _int("ICudaEngine.get_tensor_name", "index", index)
        return self._h["io"][index]["name"] if 0 <= index < len(self._h["io"]) else None

    def __getitem__(self, index):
        name = self.get_tensor_name(index if index >= 0 else len(self._h["io"]) + index)
        if name is None:
            raise IndexError(index)
        return name

    def _tensor(self, func, name):
        _check(f"ICudaEngine.{func}", "name", name, str)
        return self._io.get(name)

    def get_tensor_mode(self, name):
        t = self._tensor("get_tensor_mode", name)
        return TensorIOMode.NONE if t is None else TensorIOMode[t["mode"]]

    def get_tensor_dtype(self, name):
        t = self._tensor("get_tensor_dtype", name)
        # NvInferRuntime.h getTensorDataType: "DataType::kFLOAT if the provided name does not map to an input or output"
        return DataType.FLOAT if t is None else DataType[t["dtype"]]

    def get_tensor_shape(self, name):
        t = self._tensor("get_tensor_shape", name)
        return Dims(t["shape"]) if t is not None else Dims(())

    def get_tensor_location(self, name):
        self._tensor("get_tensor_location", name)
        return TensorLocation.DEVICE

    def is_shape_inference_io(self, name):
        self._tensor("is_shape_inference_io", name)
        return False

    def get_tensor_profile_shape(self, name, profile_index):
        _check("ICudaEngine.get_tensor_profile_shape", "name", name, str)
        profile_index = _int("ICudaEngine.get_tensor_profile_shape", "profile_index", profile_index)
        profiles = self._h["profiles"]
        if not 0 <= profile_index < len(profiles) or name not in profiles[profile_index]:
            _log(self._runtime._logger, Severity.ERROR, f"getProfileShape: {name} has no shapes in profile {profile_index}")
            return [Dims(()), Dims(()), Dims(())]
        return [Dims(s) for s in profiles[profile_index][name]]

    def create_execution_context(self, *args, **kwargs):
        """Overloads: (strategy=ExecutionContextAllocationStrategy.STATIC) and (runtime_config=None)."""
        if len(args) + len(kwargs) > 1 or (kwargs and set(kwargs) - {"strategy", "runtime_config"}):
            raise TypeError("create_execution_context(): incompatible function arguments")
        value = args[0] if args else next(iter(kwargs.values()), ExecutionContextAllocationStrategy.STATIC)
        if value is not None and not isinstance(value, ExecutionContextAllocationStrategy):
            raise TypeError("create_execution_context(): incompatible function arguments")
        RECORD.add("ICudaEngine.create_execution_context", strategy=value)
        return IExecutionContext._make(self)

    def create_engine_inspector(self):
        RECORD.add("ICudaEngine.create_engine_inspector")
        return EngineInspector._make(self)

    def serialize(self):
        head = json.dumps(self._h).encode()
        return IHostMemory(MAGIC + struct.pack("<I", len(head)) + head + self._onnx)

    # -- fake internals: shapes and the ONNX Runtime session
    def _shapes_for(self, input_shapes: dict) -> dict:
        key = tuple(sorted((k, tuple(v)) for k, v in input_shapes.items()))
        with self._lock:
            if key not in self._shape_cache:
                import onnx

                model = onnx.load_model_from_string(self._onnx)
                for vi in model.graph.input:
                    if vi.name in input_shapes:
                        for d, v in zip(vi.type.tensor_type.shape.dim, input_shapes[vi.name]):
                            d.dim_value = int(v)
                inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
                shapes = {}
                for vi in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info):
                    dims = vi.type.tensor_type.shape.dim
                    shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
                for init in inferred.graph.initializer:
                    shapes[init.name] = list(init.dims)
                self._shape_cache[key] = shapes
            return self._shape_cache[key]

    def _session(self):
        with self._lock:
            if "s" not in self._sessions:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.log_severity_level = 3
                self._sessions["s"] = ort.InferenceSession(self._emulated_model(), options,
                                                           providers=["CPUExecutionProvider"])
            return self._sessions["s"]

    def _emulated_model(self) -> bytes:
        """The ONNX model, with the float outputs of layers that run in FP16 rounded to float16 and back."""
        if not FAKE.emulate_fp16:
            return self._onnx
        import onnx
        from onnx import TensorProto, helper

        half = {name for name, p in self._h["layer_precision"].items() if p == "HALF"}
        for el in self._h["engine_layers"]:  # a fused region runs in the region's precision
            if el["precision"] == "HALF":
                half.update(el["members"])
        if not half:
            return self._onnx
        model = onnx.load_model_from_string(self._onnx)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        types = {vi.name: vi.type.tensor_type.elem_type for vi in (*inferred.graph.output, *inferred.graph.value_info)}
        nodes = []
        for node in model.graph.node:
            name = node.name or f"node_of_{node.output[0]}"
            nodes.append(node)
            if name not in half:
                continue
            for k, out in enumerate(list(node.output)):
                if types.get(out) != TensorProto.FLOAT:
                    continue
                raw = f"{out}__fake_fp32"
                node.output[k] = raw
                nodes.append(helper.make_node("Cast", [raw], [f"{out}__fake_fp16"], to=TensorProto.FLOAT16))
                nodes.append(helper.make_node("Cast", [f"{out}__fake_fp16"], [out], to=TensorProto.FLOAT))
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        return model.SerializeToString()


class IExecutionContext(_Strict):
    __slots__ = ("_engine", "_shapes", "_addresses", "_name", "_debug_sync", "_profile", "_nvtx")
    __init__ = _no_init("IExecutionContext")

    @classmethod
    def _make(cls, engine):
        c = object.__new__(cls)
        c._engine, c._shapes, c._addresses, c._name, c._debug_sync, c._profile = engine, {}, {}, "", False, 0
        c._nvtx = engine.profiling_verbosity
        return c

    engine = property(lambda self: self._engine)
    active_optimization_profile = property(lambda self: self._profile)

    @property
    def name(self):
        return self._name

    @name.setter
    def name(self, value):
        self._name = _check("IExecutionContext.name", "name", value, str)

    @property
    def debug_sync(self):
        return self._debug_sync

    @debug_sync.setter
    def debug_sync(self, value):
        self._debug_sync = _check("IExecutionContext.debug_sync", "value", value, _builtin_bool)

    @property
    def nvtx_verbosity(self):
        return self._nvtx

    @nvtx_verbosity.setter
    def nvtx_verbosity(self, value):
        _check("IExecutionContext.nvtx_verbosity", "value", value, ProfilingVerbosity)
        order = [ProfilingVerbosity.NONE, ProfilingVerbosity.LAYER_NAMES_ONLY, ProfilingVerbosity.DETAILED]
        if order.index(value) <= order.index(self._engine.profiling_verbosity):  # "may not be raised above" the build's
            self._nvtx = value

    @property
    def all_binding_shapes_specified(self):
        return all(t["name"] in self._shapes for t in self._engine._h["io"] if t["mode"] == "INPUT")

    all_shape_inputs_specified = property(lambda self: True)

    def _logger(self):
        return self._engine._runtime._logger

    def set_input_shape(self, name, shape):
        _check("IExecutionContext.set_input_shape", "name", name, str)
        dims = _dims("IExecutionContext.set_input_shape", "shape", shape)
        RECORD.add("IExecutionContext.set_input_shape", name=name, shape=dims)
        t = self._engine._io.get(name)
        if t is None or t["mode"] != "INPUT":
            _log(self._logger(), Severity.ERROR, f"IExecutionContext::setInputShape: Error Code 3: API Usage Error "
                                                 f"(Parameter check failed, condition: {name} is not an input tensor)")
            return False
        mn, _, mx = self._engine._h["profiles"][self._profile][name]
        if len(dims) != len(t["shape"]) or any(s >= 0 and s != d for s, d in zip(t["shape"], dims)) \
                or any(not a <= d <= b for a, d, b in zip(mn, dims, mx)):
            _log(self._logger(), Severity.ERROR, f"IExecutionContext::setInputShape: Error Code 3: API Usage Error "
                                                 f"(Parameter check failed: shape {list(dims)} of {name} is outside the "
                                                 f"optimization profile [{mn}, {mx}] or the static dimensions {t['shape']})")
            return False
        self._shapes[name] = dims
        return True

    def get_tensor_shape(self, name):
        _check("IExecutionContext.get_tensor_shape", "name", name, str)
        t = self._engine._io.get(name)
        if t is None:
            return Dims(())
        if t["mode"] == "INPUT":
            return Dims(self._shapes.get(name, t["shape"]))
        if not self.all_binding_shapes_specified:
            return Dims(t["shape"])
        return Dims(self._engine._shapes_for(self._shapes)[name])

    def get_tensor_strides(self, name):
        shape = list(self.get_tensor_shape(name))
        strides, acc = [], 1
        for d in reversed(shape):
            strides.insert(0, acc)
            acc *= max(d, 1)
        return Dims(strides)

    def set_tensor_address(self, name, memory):
        _check("IExecutionContext.set_tensor_address", "name", name, str)
        memory = _int("IExecutionContext.set_tensor_address", "memory", memory)
        RECORD.add("IExecutionContext.set_tensor_address", name=name, memory=memory)
        if name not in self._engine._io:
            _log(self._logger(), Severity.ERROR, f"IExecutionContext::setTensorAddress: Error Code 3: API Usage Error "
                                                 f"(Given invalid tensor name: {name})")
            return False
        self._addresses[name] = memory
        return True

    def get_tensor_address(self, name):
        _check("IExecutionContext.get_tensor_address", "name", name, str)
        return self._addresses.get(name, 0)

    def infer_shapes(self):
        return [] if self.all_binding_shapes_specified else [n for n, t in self._engine._io.items()
                                                              if t["mode"] == "INPUT" and n not in self._shapes]

    def set_optimization_profile_async(self, profile_index, stream_handle):
        profile_index = _int("IExecutionContext.set_optimization_profile_async", "profile_index", profile_index)
        _int("IExecutionContext.set_optimization_profile_async", "stream_handle", stream_handle)
        if not 0 <= profile_index < self._engine.num_optimization_profiles:
            return False
        self._profile = profile_index
        return True

    def execute_async_v3(self, stream_handle):
        stream_handle = _int("IExecutionContext.execute_async_v3", "stream_handle", stream_handle)
        call = RECORD.add("IExecutionContext.execute_async_v3", stream_handle=stream_handle,
                          shapes=dict(self._shapes), addresses=dict(self._addresses))
        call.result = self._enqueue(stream_handle)
        return call.result

    def execute_v2(self, bindings):
        raise NotImplementedError("fake tensorrt: execute_v2 is not simulated; use set_tensor_address + execute_async_v3")

    def _enqueue(self, stream_handle) -> bool:
        log = self._logger()
        io = self._engine._h["io"]
        missing = [t["name"] for t in io if t["mode"] == "INPUT" and t["name"] not in self._shapes]
        if missing:
            _log(log, Severity.ERROR, f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error (input shapes not "
                                      f"specified: {missing})")
            return False
        unset = [t["name"] for t in io if not self._addresses.get(t["name"])]
        if unset:
            _log(log, Severity.ERROR, f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error (Parameter check "
                                      f"failed: the address of tensor(s) {unset} is not set)")
            return False
        try:
            from pycuda import _fakegpu as gpu
        except ImportError:
            _log(log, Severity.ERROR, "fake tensorrt: execution needs the fake pycuda (pycuda._fakegpu) for device memory")
            return False
        if stream_handle == 0:
            _log(log, Severity.WARNING, "Using default stream in enqueueV3() may lead to performance issues due to additional "
                                        "calls to cudaStreamSynchronize() by TensorRT to ensure correct synchronization. "
                                        "Please use non-default stream instead.")
        shapes = self._engine._shapes_for(self._shapes)
        plan = []
        for t in io:
            shape = tuple(self._shapes[t["name"]]) if t["mode"] == "INPUT" else tuple(shapes[t["name"]])
            dtype = np.dtype({"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64,
                              "UINT8": np.uint8, "INT8": np.int8, "BOOL": np.bool_}[t["dtype"]])
            nbytes = int(np.prod(shape)) * dtype.itemsize
            view = gpu.device_view(self._addresses[t["name"]], nbytes)
            if view is None:
                _log(log, Severity.ERROR, f"fake tensorrt: an illegal memory access was encountered: {t['name']} needs "
                                          f"{nbytes} bytes at 0x{self._addresses[t['name']]:x}, outside any live allocation")
                return False
            plan.append((t, shape, dtype, view))
        engine = self._engine

        def run():
            feeds = {t["name"]: np.frombuffer(view, dtype=dtype).reshape(shape).copy()
                     for t, shape, dtype, view in plan if t["mode"] == "INPUT"}
            names = [t["name"] for t, *_ in plan if t["mode"] == "OUTPUT"]
            results = engine._session().run(names, feeds)
            for (t, shape, dtype, view), value in zip([p for p in plan if p[0]["mode"] == "OUTPUT"], results):
                np.frombuffer(view, dtype=dtype).reshape(shape)[...] = value.astype(dtype, copy=False)

        if not gpu.enqueue(stream_handle, run, "enqueueV3"):
            _log(log, Severity.ERROR, f"fake tensorrt: invalid stream handle 0x{stream_handle:x} (no live stream, or its "
                                      "context is not current on this thread)")
            return False
        return True


# -- inspector ----------------------------------------------------------------------------------
class EngineInspector(_Strict):
    """pyCore.cpp ``EngineInspector`` (C++ IEngineInspector): execution_context property,
    get_layer_information(layer_index, format), get_engine_information(format)."""

    __slots__ = ("_engine", "_context")
    __init__ = _no_init("EngineInspector")

    @classmethod
    def _make(cls, engine):
        i = object.__new__(cls)
        i._engine, i._context = engine, None
        return i

    @property
    def execution_context(self):
        return self._context

    @execution_context.setter
    def execution_context(self, value):
        _check("EngineInspector.execution_context", "value", value, IExecutionContext, allow_none=True)
        RECORD.add("EngineInspector.execution_context", value=value)
        self._context = value

    def _shapes(self):
        c = self._context
        if c is not None and c.all_binding_shapes_specified:
            return self._engine._shapes_for(c._shapes), True
        return None, False

    def _layer(self, el, shapes, concrete):
        verbosity = self._engine._h["profiling_verbosity"]
        if verbosity == "LAYER_NAMES_ONLY":
            return el["name"]
        if verbosity == "NONE":
            return None
        fmt = KGEN_FORMAT if el["kgen"] else CLASSIC_FORMAT
        dtype_of = {}
        for other in self._engine._h["engine_layers"]:
            dtype_of.update(other["out_dtype"])
        for t in self._engine._h["io"]:
            if t["mode"] == "INPUT":
                dtype_of[t["name"]] = t["dtype"]

        def region(name):
            base = el.get("alias_of", {}).get(name, name)
            for other in self._engine._h["engine_layers"]:
                base = other.get("alias_of", {}).get(base, base)
            dims = (shapes or {}).get(base)
            if dims is None:
                dims = self._engine._h["tensor_shapes"].get(base, [])
            info = {"Name": name, "Location": "Device", "Dimensions": list(dims)}
            # NvInferRuntime.h IEngineInspector::setExecutionContext: without a context whose input shapes are all set,
            # "values dependent on input shapes will be displayed as -1 and format information will not be shown"
            dynamic = any(d < 0 for t in self._engine._h["io"] for d in t["shape"])
            info["Format/Datatype"] = fmt.get(dtype_of.get(name, "FLOAT")) if (concrete or not dynamic) else "N/A"
            return info

        out = {"Name": el["name"], "LayerType": el["layer_type"],
               "Inputs": [region(t) for t in el["inputs"]], "Outputs": [region(t) for t in el["outputs"]],
               "ParameterType": el["parameter_type"]}
        for key, value in el["weights"].items():
            out[key] = value
        if el.get("origin"):
            out["Origin"] = el["origin"]
        if el["metadata"]:
            out["Metadata"] = el["metadata"]
        if el["kgen"]:
            out["TacticName"] = "__myl_fake_kernel"
        out["TacticValue"] = "0x0000000000000000"
        return out

    def get_layer_information(self, layer_index, format):  # noqa: A002 - the binding's argument name
        layer_index = _int("EngineInspector.get_layer_information", "layer_index", layer_index)
        _check("EngineInspector.get_layer_information", "format", format, LayerInformationFormat)
        RECORD.add("EngineInspector.get_layer_information", layer_index=layer_index, format=format)
        layers = self._engine._h["engine_layers"]
        if not 0 <= layer_index < len(layers):
            return None
        shapes, concrete = self._shapes()
        info = self._layer(layers[layer_index], shapes, concrete)
        if format is LayerInformationFormat.JSON:
            return json.dumps(info, indent=2) if info is not None else ""
        return _oneline(info) if isinstance(info, dict) else (info or "")

    def get_engine_information(self, format):  # noqa: A002
        _check("EngineInspector.get_engine_information", "format", format, LayerInformationFormat)
        RECORD.add("EngineInspector.get_engine_information", format=format)
        shapes, concrete = self._shapes()
        infos = [self._layer(el, shapes, concrete) for el in self._engine._h["engine_layers"]]
        infos = [i for i in infos if i is not None]
        bindings = [t["name"] for t in self._engine._h["io"]]
        if format is LayerInformationFormat.JSON:
            return json.dumps({"Layers": infos, "Bindings": bindings}, indent=2)
        return "\n".join(_oneline(i) if isinstance(i, dict) else i for i in infos) + "\n"


def _oneline(info: dict) -> str:
    # shaped like the kONELINE lines in TensorRT's verbose build log (NVIDIA/TensorRT issue #4397):
    # "Layer(Myelin): <name>, Tactic: 0x..., in (Int32[1,40]) -> out (Half[1])"
    def regions(rs):
        return ", ".join(f"{r['Name']} ({r['Format/Datatype']}[{','.join(map(str, r['Dimensions']))}])" for r in rs)
    return (f"Layer({info['LayerType']}): {info['Name']}, Tactic: {info['TacticValue']}, {regions(info['Inputs'])} -> "
            f"{regions(info['Outputs'])}")
