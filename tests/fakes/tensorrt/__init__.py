"""A recording fake of the ``tensorrt`` Python module (TensorRT 10.x), for CI machines without a GPU.

The ``fake_gpu`` fixture (``tests/conftest.py``) puts ``tests/fakes`` first on ``sys.path`` for one
test; ``import tensorrt`` then gets this module (see ``tests/fakes/README.md``). Only the API surface
hipcad uses (and its close neighbours) exists; every other name raises AttributeError, exactly as a
misspelt name does on the real module.

Fidelity rules (sources: NVIDIA/TensorRT v10.16 ``python/src/infer/pyCore.cpp``, ``pyGraph.cpp``,
``pyFoundationalTypes.cpp``, ``python/src/parsers/pyOnnx.cpp``, ``python/packaging/bindings_wheel/
tensorrt/__init__.py``; the docstrings in ``python/docstrings/infer/*.h``):

* every method takes the real pybind11 argument names (``"name"_a``), so positional and keyword calls
  behave as on the real module, and unknown keywords raise TypeError;
* properties are properties (``def_property``/``def_property_readonly``) and methods are methods;
  assigning a misspelt attribute raises AttributeError (``__slots__``, as pybind11 classes without
  ``py::dynamic_attr``); read-only properties raise AttributeError on assignment;
* enums (``_enums.py``) are generated from the bindings and C++ headers: real member names and values;
* arguments of the wrong type raise TypeError ("incompatible function arguments"), like pybind11;
* functions that return a nullable pointer in C++ return None on failure (``build_serialized_network``,
  ``deserialize_cuda_engine``, ``get_layer``...) and log through the ILogger, as TensorRT does;
* calls deprecated in 10.12 (``ILayer.precision`` setter, ``set_output_type``...) emit the same
  DeprecationWarning as ``utils::deprecateMember`` (python/src/utils.cpp) when ``__version__ >= 10.12``.

What is *simulated* (not TensorRT's behaviour, only shaped like it): the layer list made by the ONNX
parser (see ``_onnxnet``), the plan bytes (a JSON header + the ONNX model), the engine layers and the
inspector JSON (keys as in TensorRT 10 / trex / Polygraphy: "Layers", "Bindings", "Name",
"LayerType", "Inputs"/"Outputs" with "Name", "Location", "Dimensions", "Format/Datatype",
"ParameterType", "Metadata", "TacticValue"), and execution, which runs ONNX Runtime on the CPU with
FP16 layers emulated by rounding their outputs to float16. Knobs are on :data:`FAKE`.

Every public call appends to :data:`RECORD` (see ``_fakerecord``).
"""

from __future__ import annotations

import builtins
import json
import os
import warnings
from typing import Any

from _fakerecord import Call, Record  # noqa: F401

from . import _onnxnet
from ._enums import (  # noqa: F401 - re-exported like the real module
    ActivationType,
    AllocatorFlag,
    APILanguage,
    BuilderFlag,
    DataType,
    DeviceType,
    ElementWiseOperation,
    EngineCapability,
    EngineStat,
    ErrorCode,
    ErrorCodeTRT,
    ExecutionContextAllocationStrategy,
    HardwareCompatibilityLevel,
    LayerInformationFormat,
    LayerType,
    MemoryPoolType,
    NetworkDefinitionCreationFlag,
    OnnxParserFlag,
    PoolingType,
    PreviewFeature,
    ProfilingVerbosity,
    QuantizationFlag,
    ReduceOperation,
    RuntimePlatform,
    SerializationFlag,
    Severity,
    TacticSource,
    TempfileControlFlag,
    TensorFormat,
    TensorIOMode,
    TensorLocation,
    TilingOptimizationLevel,
    UnaryOperation,
)

_builtin_bool = builtins.bool
__version__ = os.environ.get("FAKE_TENSORRT_VERSION", "10.16.0.72")
RECORD = Record()

# trt.float32 ... (pyFoundationalTypes.cpp: m.attr("float32") = DataType::kFLOAT ...)
float32, float16, bfloat16 = DataType.FLOAT, DataType.HALF, DataType.BF16
int8, int32, int64, bool, uint8 = DataType.INT8, DataType.INT32, DataType.INT64, DataType.BOOL, DataType.UINT8  # noqa: A001
fp8, int4, fp4, e8m0 = DataType.FP8, DataType.INT4, DataType.FP4, DataType.E8M0


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


class FakeSettings:
    """Knobs of the simulation (not part of the real API). Reset with ``FAKE.reset()``."""

    __slots__ = ("gpu_name", "compute_capability", "platform_has_tf32", "platform_has_fast_fp16",
                 "fusion", "unsatisfiable_pins", "emulate_fp16", "build_fails", "deprecation_warnings")

    def __init__(self):
        self.reset()

    def reset(self):
        #: the device the fake builds for; keep in step with the fake pycuda device (same env variables)
        self.gpu_name = os.environ.get("FAKE_CUDA_DEVICE_NAME", "NVIDIA A100-SXM4-80GB")
        self.compute_capability = tuple(int(x) for x in os.environ.get("FAKE_CUDA_CC", "8.0").split("."))
        self.platform_has_tf32 = self.compute_capability >= (8, 0)
        self.platform_has_fast_fp16 = self.compute_capability >= (5, 3)
        #: None: one engine layer per network layer; "pointwise": fuse Conv+activation and pointwise chains
        #: (precision of a fused region = that of its first layer, so later pins are lost, cf. NVIDIA/TensorRT
        #: issues #3889/#4505); "myelin_tail": everything after the last convolution becomes one Myelin
        #: "{ForeignNode[first...last]}" layer that runs FP16 in an FP16 build whatever the pins say
        self.fusion = None
        #: layer names whose pins no implementation honours: OBEY fails the build, PREFER warns and drops them
        self.unsatisfiable_pins = set()
        #: FP16 layers: round their float outputs to float16 during execution
        self.emulate_fp16 = True
        #: make every build_serialized_network return None (a failed build)
        self.build_fails = False
        self.deprecation_warnings = True


FAKE = FakeSettings()


# -- helpers ------------------------------------------------------------------------------------
def _type_error(func: str, arg: str, value: Any, expected: str) -> TypeError:
    return TypeError(f"{func}(): incompatible function arguments. Argument '{arg}': expected {expected}, "
                     f"got {type(value).__name__} ({value!r:.80})")


def _check(func, arg, value, types, expected=None, allow_none=False):
    if value is None and allow_none:
        return value
    if not isinstance(value, types):
        names = expected or " | ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise _type_error(func, arg, value, names)
    return value


def _int(func, arg, value):
    if isinstance(value, (DataType, LayerType)) or value is None or isinstance(value, float):
        raise _type_error(func, arg, value, "int")
    try:
        return int(value.__index__())
    except (AttributeError, TypeError):
        raise _type_error(func, arg, value, "int") from None


def _buffer(func, arg, value) -> bytes:
    if isinstance(value, str):
        raise _type_error(func, arg, value, "buffer")
    try:
        return bytes(memoryview(value).cast("B"))
    except TypeError:
        raise _type_error(func, arg, value, "buffer") from None


def _deprecated(use_instead: str) -> None:
    # utils::issueDeprecationWarning (python/src/utils.cpp): PyErr_WarnEx(DeprecationWarning, "Use <x> instead.", 1)
    if FAKE.deprecation_warnings and _version_tuple(__version__) >= (10, 12):
        warnings.warn(f"Use {use_instead} instead.", DeprecationWarning, stacklevel=3)


_STRONG = "Deprecated in TensorRT 10.12. Superseded by strong typing."


def _log(logger, severity: Severity, msg: str) -> None:
    if logger is not None:
        logger.log(severity, msg)


class _Strict:
    """Base: no instance __dict__, construction from Python refused unless the class allows it."""

    __slots__ = ("__weakref__",)


def _no_init(cls_name):
    def __init__(self, *args, **kwargs):
        raise TypeError(f"tensorrt.{cls_name}: No constructor defined!")
    return __init__


# -- Dims ---------------------------------------------------------------------------------------
class Dims(_Strict):
    """pyFoundationalTypes.cpp ``Dims``: sequence of ints, == tuples/lists, MAX_DIMS = 8."""

    __slots__ = ("_d",)
    MAX_DIMS = 8

    def __init__(self, shape=()):
        d = tuple(_int("Dims.__init__", "shape", v) for v in shape)
        if len(d) > self.MAX_DIMS:
            raise RuntimeError("The number of input dims exceeds the maximum allowed number of dimensions")
        self._d = d

    def __len__(self):
        return len(self._d)

    def __getitem__(self, i):
        return self._d[i]

    def __setitem__(self, i, v):
        d = list(self._d)
        d[i] = v
        self._d = tuple(d)

    def __eq__(self, other):
        if isinstance(other, Dims):
            return self._d == other._d
        if isinstance(other, (tuple, list)):
            return len(other) == len(self._d) and all(int(a) == b for a, b in zip(other, self._d))
        return NotImplemented

    def __repr__(self):
        return "(" + ", ".join(str(x) for x in self._d) + ("," if len(self._d) == 1 else "") + ")"

    __str__ = __repr__
    __hash__ = None


def _dims(func, arg, value) -> tuple[int, ...]:
    if isinstance(value, Dims):
        return value._d
    if isinstance(value, (tuple, list)):
        return tuple(_int(func, arg, v) for v in value)
    raise _type_error(func, arg, value, "tensorrt.Dims | tuple | list")


# -- IHostMemory --------------------------------------------------------------------------------
class IHostMemory(bytes):
    """pyFoundationalTypes.cpp ``IHostMemory``: buffer protocol, ``dtype``, ``nbytes``.

    A ``bytes`` subclass so that ``memoryview(plan)`` works in pure Python 3.11 (the real class is a
    pybind11 buffer); it therefore also has the bytes methods, which the real one lacks.
    """

    __slots__ = ()

    @property
    def nbytes(self) -> int:
        return len(self)

    @property
    def dtype(self) -> DataType:
        return DataType.UINT8


# -- logging ------------------------------------------------------------------------------------
class ILogger:
    """pyCore.cpp ``ILogger`` (subclassable; ``log(severity, msg)`` is pure virtual)."""

    __slots__ = ("__weakref__",)
    Severity = Severity

    def __init__(self):
        RECORD.add("ILogger.__init__", self=self)

    def log(self, severity, msg):
        raise RuntimeError('Tried to call pure virtual function "ILogger::log"')


for _m in Severity:  # export_values(): trt.ILogger.WARNING
    setattr(ILogger, _m.name, _m)


class Logger(ILogger):
    """pyCore.cpp ``Logger(min_severity=Severity.WARNING)``; prints ``[TRT] [W] msg`` to stdout like DefaultLogger."""

    __slots__ = ("min_severity", "messages")

    def __init__(self, min_severity=Severity.WARNING):
        _check("Logger.__init__", "min_severity", min_severity, Severity, "tensorrt.ILogger.Severity")
        self.min_severity = min_severity
        self.messages: list[tuple[Severity, str]] = []  # fake only: what was logged
        RECORD.add("Logger", min_severity=min_severity)

    def log(self, severity, msg):
        _check("Logger.log", "severity", severity, Severity)
        _check("Logger.log", "msg", msg, str)
        self.messages.append((severity, msg))
        if severity.value <= self.min_severity.value:
            print(f"[TRT] [{severity.name[0]}] {msg}", flush=True)


# bindings_wheel/tensorrt/__init__.py: Logger.Severity = ILogger.Severity; setattr(Logger, name, value)
for _m in Severity:
    setattr(Logger, _m.name, _m)


def _logger_arg(func, logger):
    if isinstance(logger, ILogger):
        return logger
    raise _type_error(func, "logger", logger, "tensorrt.ILogger")


# -- progress monitor ---------------------------------------------------------------------------
class _InitCheck(type):
    """pybind11 refuses a Python subclass whose __init__ did not call the base __init__."""

    def __call__(cls, *args, **kwargs):
        obj = super().__call__(*args, **kwargs)
        if cls.__name__ != "IProgressMonitor" and not getattr(obj, "_fake_base_init", False):
            raise TypeError(f"{cls.__name__}.__init__() must be called when overriding __init__")
        return obj


class IProgressMonitor(metaclass=_InitCheck):
    """pyCore.cpp ``IProgressMonitor``: phase_start(phase_name, parent_phase, num_steps),
    step_complete(phase_name, step) -> bool, phase_finish(phase_name); pure virtual."""

    def __init__(self):
        self._fake_base_init = True

    def phase_start(self, phase_name, parent_phase, num_steps):
        raise RuntimeError('Tried to call pure virtual function "IProgressMonitor::phaseStart"')

    def step_complete(self, phase_name, step):
        raise RuntimeError('Tried to call pure virtual function "IProgressMonitor::stepComplete"')

    def phase_finish(self, phase_name):
        raise RuntimeError('Tried to call pure virtual function "IProgressMonitor::phaseFinish"')


def _monitor_call(monitor, method, *args):
    """PyProgressMonitor (pyCore.cpp): exceptions are printed; step_complete then returns False (cancel)."""
    import sys

    try:
        result = getattr(monitor, method)(*args)
    except Exception as err:  # noqa: BLE001
        print(f"[ERROR] Exception caught in {method}(): {err}", file=sys.stderr)
        return False
    if method == "step_complete":
        return _builtin_bool(result)
    return True


# -- network ------------------------------------------------------------------------------------
class ITensor(_Strict):
    __slots__ = ("_name", "_dtype", "_shape", "_is_input", "_is_output", "_is_shape", "_network")
    __init__ = _no_init("ITensor")

    @classmethod
    def _make(cls, network, parsed, is_input=False):
        t = object.__new__(cls)
        t._network, t._name, t._dtype, t._shape = network, parsed.name, parsed.dtype, parsed.shape
        t._is_input, t._is_output, t._is_shape = is_input, False, parsed.is_shape_tensor
        return t

    name = property(lambda self: self._name, lambda self, v: setattr(self, "_name", _check("ITensor.name", "name", v, str)))
    shape = property(lambda self: Dims(self._shape),
                     lambda self, v: setattr(self, "_shape", _dims("ITensor.shape", "shape", v)))

    @property
    def dtype(self):
        return self._dtype

    @dtype.setter
    def dtype(self, value):
        _deprecated(_STRONG)
        self._dtype = _check("ITensor.dtype", "dtype", value, DataType)

    location = property(lambda self: TensorLocation.DEVICE)
    is_network_input = property(lambda self: self._is_input)
    is_network_output = property(lambda self: self._is_output)
    is_shape_tensor = property(lambda self: self._is_shape)
    is_execution_tensor = property(lambda self: not self._is_shape)


class ILayer(_Strict):
    """pyGraph.cpp ``ILayer``. ``network.get_layer(i)`` returns ILayer (not the derived class)."""

    __slots__ = ("_network", "_name", "_type", "_op", "_inputs", "_outputs", "_precision", "_precision_set",
                 "_output_types", "_metadata", "_weights")
    __init__ = _no_init("ILayer")

    @classmethod
    def _make(cls, network, parsed):
        layer = object.__new__(cls)
        layer._network, layer._name, layer._type, layer._op = network, parsed.name, parsed.type, parsed.op
        layer._inputs, layer._outputs = list(parsed.inputs), list(parsed.outputs)
        layer._precision, layer._precision_set, layer._output_types = DataType.FLOAT, False, {}
        layer._metadata = f"[ONNX Layer: {parsed.name}]" if parsed.op else ""
        layer._weights = dict(parsed.weights)
        return layer

    @property
    def name(self):
        return self._name

    @name.setter
    def name(self, value):
        self._name = _check("ILayer.name", "name", value, str)

    @property
    def metadata(self):
        return self._metadata

    @metadata.setter
    def metadata(self, value):
        self._metadata = _check("ILayer.metadata", "metadata", value, str)

    type = property(lambda self: self._type)
    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    @property
    def precision(self):
        return self._precision

    @precision.setter
    def precision(self, value):
        _deprecated(_STRONG)
        _check("ILayer.precision", "precision", value, DataType)
        RECORD.add("ILayer.precision", layer=self._name, precision=value)
        self._precision, self._precision_set = value, True

    @property
    def precision_is_set(self):
        _deprecated(_STRONG)
        return self._precision_set

    def get_input(self, index):
        index = _int("ILayer.get_input", "index", index)
        if not 0 <= index < len(self._inputs):
            return None
        return self._network._tensors[self._inputs[index]]

    def get_output(self, index):
        index = _int("ILayer.get_output", "index", index)
        if not 0 <= index < len(self._outputs):
            return None
        return self._network._tensors[self._outputs[index]]

    def set_input(self, index, tensor):
        raise NotImplementedError("fake tensorrt: ILayer.set_input is not simulated")

    def reset_precision(self):
        _deprecated(_STRONG)
        self._precision, self._precision_set = DataType.FLOAT, False

    def set_output_type(self, index, dtype):
        _deprecated(_STRONG)
        index = _int("ILayer.set_output_type", "index", index)
        _check("ILayer.set_output_type", "dtype", dtype, DataType)
        RECORD.add("ILayer.set_output_type", layer=self._name, index=index, dtype=dtype)
        if not 0 <= index < len(self._outputs):
            _log(self._network._logger, Severity.ERROR, f"{self._name}: setOutputType index {index} out of range")
            return
        self._output_types[index] = dtype

    def get_output_type(self, index):
        index = _int("ILayer.get_output_type", "index", index)
        return self._output_types.get(index, DataType.FLOAT)

    def output_type_is_set(self, index):
        _deprecated(_STRONG)
        return _int("ILayer.output_type_is_set", "index", index) in self._output_types

    def reset_output_type(self, index):
        _deprecated(_STRONG)
        self._output_types.pop(_int("ILayer.reset_output_type", "index", index), None)


class INetworkDefinition(_Strict):
    __slots__ = ("_builder", "_flags", "_name", "_layers", "_inputs", "_outputs", "_tensors", "_parsed", "_logger")
    __init__ = _no_init("INetworkDefinition")

    @classmethod
    def _make(cls, builder, flags):
        n = object.__new__(cls)
        n._builder, n._flags, n._name, n._logger = builder, flags, "Unnamed Network 0", builder._logger
        n._layers, n._inputs, n._outputs, n._tensors, n._parsed = [], [], [], {}, None
        return n

    @property
    def name(self):
        return self._name

    @name.setter
    def name(self, value):
        self._name = _check("INetworkDefinition.name", "name", value, str)

    num_layers = property(lambda self: len(self._layers))
    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))
    flags = property(lambda self: self._flags)
    builder = property(lambda self: self._builder)

    def get_layer(self, index):
        index = _int("INetworkDefinition.get_layer", "index", index)
        return self._layers[index] if 0 <= index < len(self._layers) else None

    def get_input(self, index):
        index = _int("INetworkDefinition.get_input", "index", index)
        return self._inputs[index] if 0 <= index < len(self._inputs) else None

    def get_output(self, index):
        index = _int("INetworkDefinition.get_output", "index", index)
        return self._outputs[index] if 0 <= index < len(self._outputs) else None

    def mark_output(self, tensor):
        _check("INetworkDefinition.mark_output", "tensor", tensor, ITensor)
        if tensor not in self._outputs:
            tensor._is_output = True
            self._outputs.append(tensor)

    def unmark_output(self, tensor):
        _check("INetworkDefinition.unmark_output", "tensor", tensor, ITensor)
        if tensor in self._outputs:
            tensor._is_output = False
            self._outputs.remove(tensor)

    def __len__(self):
        return len(self._layers)

    def __getitem__(self, index):
        layer = self.get_layer(index if index >= 0 else len(self._layers) + index)
        if layer is None:
            raise IndexError(index)
        return layer

    def _populate(self, parsed: _onnxnet.ParsedNetwork) -> None:
        self._parsed = parsed
        for name, t in parsed.tensors.items():
            self._tensors[name] = ITensor._make(self, t, is_input=t in parsed.inputs)
        self._inputs = [self._tensors[t.name] for t in parsed.inputs]
        self._layers = [ILayer._make(self, layer) for layer in parsed.layers]
        for name in parsed.outputs:
            self.mark_output(self._tensors[name])


# -- ONNX parser --------------------------------------------------------------------------------
class ParserError(_Strict):
    """pyOnnx.cpp ``ParserError`` (IParserError): code(), desc(), file(), line(), func(), node(),
    node_name(), node_operator(), local_function_stack(), local_function_stack_size()."""

    __slots__ = ("_e",)
    __init__ = _no_init("ParserError")

    @classmethod
    def _make(cls, parsed_error):
        e = object.__new__(cls)
        e._e = parsed_error
        return e

    def code(self):
        return self._e.code

    def desc(self):
        return self._e.desc

    def file(self):
        return "fake_onnx_parser.py"

    def line(self):
        return 0

    def func(self):
        return self._e.func

    def node(self):
        return self._e.node

    def node_name(self):
        return self._e.node_name

    def node_operator(self):
        return self._e.node_operator

    def local_function_stack(self):
        return []

    def local_function_stack_size(self):
        return 0

    def __str__(self):
        # pyonnx2trt::parserErrorStr
        info = f"({self._e.func}): {self._e.code.name}: {self._e.desc}"
        if self._e.code in (ErrorCode.MODEL_DESERIALIZE_FAILED, ErrorCode.REFIT_FAILED):
            return info
        return f"In node {self._e.node} with name: {self._e.node_name} and operator: {self._e.node_operator} {info}"

    __repr__ = __str__


class OnnxParser(_Strict):
    """pyOnnx.cpp ``OnnxParser(network, logger)``."""

    __slots__ = ("_network", "_logger", "_errors", "_flags")

    def __init__(self, network, logger):
        _check("OnnxParser.__init__", "network", network, INetworkDefinition)
        _logger_arg("OnnxParser.__init__", logger)
        self._network, self._logger, self._errors, self._flags = network, logger, [], 0
        RECORD.add("OnnxParser", network=network, logger=logger)

    def parse(self, model, path=None):
        data = _buffer("OnnxParser.parse", "model", model)
        _check("OnnxParser.parse", "path", path, str, "str | None", allow_none=True)
        RECORD.add("OnnxParser.parse", model_bytes=len(data), path=path)
        return self._parse(data)

    def parse_from_file(self, model):
        _check("OnnxParser.parse_from_file", "model", model, str)
        RECORD.add("OnnxParser.parse_from_file", model=model)
        try:
            with open(model, "rb") as f:
                data = f.read()
        except OSError as err:
            self._errors.append(_onnxnet.ParsedError(ErrorCode.MODEL_DESERIALIZE_FAILED, f"Failed to open {model}: {err}",
                                                     func="parseFromFile"))
            _log(self._logger, Severity.ERROR, str(ParserError._make(self._errors[-1])))
            return False
        return self._parse(data)

    def _parse(self, data: bytes) -> bool:
        if self._network._parsed is not None:
            _log(self._logger, Severity.ERROR, "fake tensorrt: the network was already populated by a parse")
            return False
        parsed, errors = _onnxnet.parse_onnx(data)
        if errors:
            self._errors.extend(errors)
            for e in errors:
                _log(self._logger, Severity.ERROR, str(ParserError._make(e)))
            return False
        self._network._populate(parsed)
        return True

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index):
        index = _int("OnnxParser.get_error", "index", index)
        return ParserError._make(self._errors[index]) if 0 <= index < len(self._errors) else None

    def clear_errors(self):
        self._errors.clear()

    def supports_operator(self, op_name):
        return _check("OnnxParser.supports_operator", "op_name", op_name, str) in _onnxnet.OP_LAYER

    @property
    def flags(self):
        return self._flags

    @flags.setter
    def flags(self, value):
        self._flags = _int("OnnxParser.flags", "flags", value)

    def set_flag(self, flag):
        self._flags |= 1 << int(_check("OnnxParser.set_flag", "flag", flag, OnnxParserFlag))

    def clear_flag(self, flag):
        self._flags &= ~(1 << int(_check("OnnxParser.clear_flag", "flag", flag, OnnxParserFlag)))

    def get_flag(self, flag):
        return _builtin_bool(self._flags & (1 << int(_check("OnnxParser.get_flag", "flag", flag, OnnxParserFlag))))


def get_nv_onnx_parser_version():
    major, minor, patch = (_version_tuple(__version__) + (0, 0, 0))[:3]
    return major * 10000 + minor * 100 + patch


# -- builder config -----------------------------------------------------------------------------
class IOptimizationProfile(_Strict):
    __slots__ = ("_shapes", "_extra_memory_target")
    __init__ = _no_init("IOptimizationProfile")

    @classmethod
    def _make(cls):
        p = object.__new__(cls)
        p._shapes, p._extra_memory_target = {}, 1.0
        return p

    def set_shape(self, input, min, opt, max):  # noqa: A002 - the binding's argument names
        _check("IOptimizationProfile.set_shape", "input", input, str)
        mn, op, mx = (_dims("IOptimizationProfile.set_shape", a, v) for a, v in (("min", min), ("opt", opt), ("max", max)))
        RECORD.add("IOptimizationProfile.set_shape", input=input, min=mn, opt=op, max=mx)
        # lambdas::opt_profile_set_shape: PY_ASSERT_RUNTIME_ERROR(setDimensions(...), "Shape provided for X is
        # inconsistent with other shapes.") for MIN, OPT, MAX in that order
        if any(d < 0 for d in mn) or len(mn) == 0:
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        if len(op) != len(mn) or any(o < m for o, m in zip(op, mn)):
            raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
        if len(mx) != len(op) or any(x < o for x, o in zip(mx, op)):
            raise RuntimeError("Shape provided for max is inconsistent with other shapes.")
        self._shapes[input] = (mn, op, mx)

    def get_shape(self, input):  # noqa: A002
        _check("IOptimizationProfile.get_shape", "input", input, str)
        return [Dims(s) for s in self._shapes.get(input, ())]

    @property
    def extra_memory_target(self):
        return self._extra_memory_target

    @extra_memory_target.setter
    def extra_memory_target(self, value):
        self._extra_memory_target = float(value)

    def __bool__(self):
        return _builtin_bool(self._shapes)


class ITimingCache(_Strict):
    """Serialized form (fake): b"fTC1" + JSON {"device": [name, cc], "trt": version, "entries": n}."""

    __slots__ = ("_device", "_trt", "_entries")
    __init__ = _no_init("ITimingCache")
    _MAGIC = b"fTC1"

    @classmethod
    def _make(cls, device, trt_version, entries=0):
        c = object.__new__(cls)
        c._device, c._trt, c._entries = device, trt_version, entries
        return c

    def serialize(self):
        RECORD.add("ITimingCache.serialize", entries=self._entries)
        return IHostMemory(self._MAGIC + json.dumps({"device": self._device, "trt": self._trt,
                                                     "entries": self._entries}).encode())

    def combine(self, input_cache, ignore_mismatch):
        _check("ITimingCache.combine", "input_cache", input_cache, ITimingCache)
        if input_cache._device != self._device and not ignore_mismatch:
            return False
        self._entries += input_cache._entries
        return True

    def reset(self):
        self._entries = 0
        return True


def _current_device():
    return [FAKE.gpu_name, list(FAKE.compute_capability)]


class IBuilderConfig(_Strict):
    """pyCore.cpp ``IBuilderConfig`` (subset). Defaults: TF32 flag set ("Enabled by default", BuilderFlag.TF32
    docstring), profiling_verbosity LAYER_NAMES_ONLY (EngineInspector docstring), builder_optimization_level 3."""

    __slots__ = ("_builder", "_flags", "_pools", "_profiles", "_profiling_verbosity", "_opt_level",
                 "_timing_cache", "_progress_monitor", "_hw_compat", "_engine_capability", "_max_aux_streams",
                 "_avg_timing_iterations", "_default_device_type", "_preview", "_max_num_tactics",
                 "_tactic_sources", "_runtime_platform")
    __init__ = _no_init("IBuilderConfig")

    @classmethod
    def _make(cls, builder):
        c = object.__new__(cls)
        c._builder = builder
        c._flags = 1 << BuilderFlag.TF32.value
        c._pools = {MemoryPoolType.WORKSPACE: 1 << 40}
        c._profiles, c._timing_cache, c._progress_monitor = [], None, None
        c._profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        c._opt_level, c._hw_compat = 3, HardwareCompatibilityLevel.NONE
        c._engine_capability, c._max_aux_streams, c._avg_timing_iterations = EngineCapability.STANDARD, -1, 1
        c._default_device_type, c._preview, c._max_num_tactics = DeviceType.GPU, set(), -1
        c._tactic_sources, c._runtime_platform = 0xFFFFFFFF, RuntimePlatform.SAME_AS_BUILD
        return c

    # flags
    @property
    def flags(self):
        return self._flags

    @flags.setter
    def flags(self, value):
        self._flags = _int("IBuilderConfig.flags", "flags", value)

    def set_flag(self, flag):
        _check("IBuilderConfig.set_flag", "flag", flag, BuilderFlag, "tensorrt.BuilderFlag")
        RECORD.add("IBuilderConfig.set_flag", flag=flag)
        self._flags |= 1 << flag.value

    def clear_flag(self, flag):
        _check("IBuilderConfig.clear_flag", "flag", flag, BuilderFlag, "tensorrt.BuilderFlag")
        RECORD.add("IBuilderConfig.clear_flag", flag=flag)
        self._flags &= ~(1 << flag.value)

    def get_flag(self, flag):
        _check("IBuilderConfig.get_flag", "flag", flag, BuilderFlag, "tensorrt.BuilderFlag")
        return _builtin_bool(self._flags & (1 << flag.value))

    def _has(self, flag):
        return _builtin_bool(self._flags & (1 << flag.value))

    # memory pools
    def set_memory_pool_limit(self, pool, pool_size):
        _check("IBuilderConfig.set_memory_pool_limit", "pool", pool, MemoryPoolType, "tensorrt.MemoryPoolType")
        pool_size = _int("IBuilderConfig.set_memory_pool_limit", "pool_size", pool_size)
        RECORD.add("IBuilderConfig.set_memory_pool_limit", pool=pool, pool_size=pool_size)
        self._pools[pool] = pool_size

    def get_memory_pool_limit(self, pool):
        _check("IBuilderConfig.get_memory_pool_limit", "pool", pool, MemoryPoolType, "tensorrt.MemoryPoolType")
        return self._pools.get(pool, 0)

    # profiles
    def add_optimization_profile(self, profile):
        _check("IBuilderConfig.add_optimization_profile", "profile", profile, IOptimizationProfile)
        RECORD.add("IBuilderConfig.add_optimization_profile", shapes=dict(profile._shapes))
        if not profile:
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    num_optimization_profiles = property(lambda self: len(self._profiles))

    # timing cache
    def create_timing_cache(self, serialized_timing_cache):
        data = _buffer("IBuilderConfig.create_timing_cache", "serialized_timing_cache", serialized_timing_cache)
        RECORD.add("IBuilderConfig.create_timing_cache", nbytes=len(data))
        if not data:
            return ITimingCache._make(_current_device(), __version__)
        try:
            if not data.startswith(ITimingCache._MAGIC):
                raise ValueError("bad magic")
            header = json.loads(data[len(ITimingCache._MAGIC):])
            return ITimingCache._make(header["device"], header["trt"], int(header["entries"]))
        except (ValueError, KeyError, TypeError):
            _log(self._builder._logger, Severity.ERROR, "fake tensorrt: invalid serialized timing cache")
            return None

    def set_timing_cache(self, cache, ignore_mismatch):
        _check("IBuilderConfig.set_timing_cache", "cache", cache, ITimingCache)
        _check("IBuilderConfig.set_timing_cache", "ignore_mismatch", ignore_mismatch, _builtin_bool)
        ok = ignore_mismatch or (cache._device == _current_device() and cache._trt == __version__)
        RECORD.add("IBuilderConfig.set_timing_cache", entries=cache._entries, ignore_mismatch=ignore_mismatch, result=ok)
        if ok:
            self._timing_cache = cache
        else:
            _log(self._builder._logger, Severity.WARNING, "fake tensorrt: timing cache device profile mismatch")
        return ok

    def get_timing_cache(self):
        return self._timing_cache

    # properties used by hipcad (and their neighbours)
    def _prop(name, check):  # noqa: N805 - class-body helper
        def get(self):
            return getattr(self, name)

        def set(self, value):  # noqa: A001
            RECORD.add(f"IBuilderConfig.{name[1:]}", value=value)
            setattr(self, name, check(value))
        return property(get, set)

    profiling_verbosity = _prop("_profiling_verbosity",
                                lambda v: _check("IBuilderConfig.profiling_verbosity", "value", v, ProfilingVerbosity))
    builder_optimization_level = _prop("_opt_level", lambda v: _int("IBuilderConfig.builder_optimization_level", "value", v))
    hardware_compatibility_level = _prop("_hw_compat", lambda v: _check("IBuilderConfig.hardware_compatibility_level",
                                                                         "value", v, HardwareCompatibilityLevel))
    engine_capability = _prop("_engine_capability",
                              lambda v: _check("IBuilderConfig.engine_capability", "value", v, EngineCapability))
    max_aux_streams = _prop("_max_aux_streams", lambda v: _int("IBuilderConfig.max_aux_streams", "value", v))
    avg_timing_iterations = _prop("_avg_timing_iterations", lambda v: _int("IBuilderConfig.avg_timing_iterations", "value", v))
    default_device_type = _prop("_default_device_type",
                                lambda v: _check("IBuilderConfig.default_device_type", "value", v, DeviceType))
    max_num_tactics = _prop("_max_num_tactics", lambda v: _int("IBuilderConfig.max_num_tactics", "value", v))
    runtime_platform = _prop("_runtime_platform",
                             lambda v: _check("IBuilderConfig.runtime_platform", "value", v, RuntimePlatform))
    progress_monitor = _prop("_progress_monitor",
                             lambda v: _check("IBuilderConfig.progress_monitor", "value", v, IProgressMonitor,
                                              allow_none=True))
    del _prop

    def set_preview_feature(self, feature, enable):
        _check("IBuilderConfig.set_preview_feature", "feature", feature, PreviewFeature)
        (self._preview.add if enable else self._preview.discard)(feature)

    def get_preview_feature(self, feature):
        return _check("IBuilderConfig.get_preview_feature", "feature", feature, PreviewFeature) in self._preview

    def set_tactic_sources(self, tactic_sources):
        self._tactic_sources = _int("IBuilderConfig.set_tactic_sources", "tactic_sources", tactic_sources)
        return True

    def get_tactic_sources(self):
        return self._tactic_sources

    def reset(self):
        fresh = self.__class__._make(self._builder)
        for slot in self.__slots__:
            setattr(self, slot, getattr(fresh, slot))


# -- builder ------------------------------------------------------------------------------------
class Builder(_Strict):
    """pyCore.cpp ``Builder(logger)``."""

    __slots__ = ("_logger", "_max_threads")

    def __init__(self, logger):
        self._logger = _logger_arg("Builder.__init__", logger)
        self._max_threads = os.cpu_count() or 1
        RECORD.add("Builder", logger=logger)

    def create_network(self, flags=0):
        flags = _int("Builder.create_network", "flags", flags)
        RECORD.add("Builder.create_network", flags=flags)
        return INetworkDefinition._make(self, flags)

    def create_builder_config(self):
        RECORD.add("Builder.create_builder_config")
        return IBuilderConfig._make(self)

    def create_optimization_profile(self):
        RECORD.add("Builder.create_optimization_profile")
        return IOptimizationProfile._make()

    platform_has_tf32 = property(lambda self: FAKE.platform_has_tf32)
    platform_has_fast_fp16 = property(lambda self: FAKE.platform_has_fast_fp16)
    platform_has_fast_int8 = property(lambda self: True)
    num_DLA_cores = property(lambda self: 0)
    max_DLA_batch_size = property(lambda self: 0)
    logger = property(lambda self: self._logger)

    @property
    def max_threads(self):
        return self._max_threads

    @max_threads.setter
    def max_threads(self, value):
        self._max_threads = _int("Builder.max_threads", "value", value)

    def is_network_supported(self, network, config):
        _check("Builder.is_network_supported", "network", network, INetworkDefinition)
        _check("Builder.is_network_supported", "config", config, IBuilderConfig)
        return network._parsed is not None

    def reset(self):
        pass

    def build_serialized_network(self, network, config, *args, **kwargs):
        """Overloads: (network, config) and (network, config, kernel_text)."""
        if args or kwargs:
            if len(args) + len(kwargs) != 1 or (kwargs and "kernel_text" not in kwargs):
                raise TypeError("build_serialized_network(): incompatible function arguments")
        _check("Builder.build_serialized_network", "network", network, INetworkDefinition)
        _check("Builder.build_serialized_network", "config", config, IBuilderConfig)
        call = RECORD.add("Builder.build_serialized_network", network=network, config=config,
                          flags=[f for f in BuilderFlag if config._has(f)])
        from ._engine import build

        plan = build(self, network, config)
        call.result = None if plan is None else len(plan)
        return plan


# -- runtime ------------------------------------------------------------------------------------
class Runtime(_Strict):
    """pyCore.cpp ``Runtime(logger)``."""

    __slots__ = ("_logger", "_host_code_allowed", "_max_threads")

    def __init__(self, logger):
        self._logger = _logger_arg("Runtime.__init__", logger)
        self._host_code_allowed, self._max_threads = False, os.cpu_count() or 1
        RECORD.add("Runtime", logger=logger)

    logger = property(lambda self: self._logger)
    num_DLA_cores = property(lambda self: 0)

    @property
    def engine_host_code_allowed(self):
        return self._host_code_allowed

    @engine_host_code_allowed.setter
    def engine_host_code_allowed(self, value):
        _check("Runtime.engine_host_code_allowed", "value", value, _builtin_bool)
        RECORD.add("Runtime.engine_host_code_allowed", value=value)
        self._host_code_allowed = value

    @property
    def max_threads(self):
        return self._max_threads

    @max_threads.setter
    def max_threads(self, value):
        self._max_threads = _int("Runtime.max_threads", "value", value)

    def deserialize_cuda_engine(self, serialized_engine):
        data = _buffer("Runtime.deserialize_cuda_engine", "serialized_engine", serialized_engine)
        call = RECORD.add("Runtime.deserialize_cuda_engine", nbytes=len(data))
        from ._engine import deserialize

        engine = deserialize(self, data)
        call.result = engine
        return engine


def nptype(trt_type):
    """bindings_wheel/tensorrt/__init__.py ``nptype``."""
    import numpy as np

    mapping = {float32: np.float32, float16: np.float16, int8: np.int8, int32: np.int32, int64: np.int64,
               bool: np.bool_, uint8: np.uint8}
    if trt_type in mapping:
        return mapping[trt_type]
    raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")


def volume(iterable):
    vol = 1
    for elem in iterable:
        vol *= elem
    return vol


from ._engine import EngineInspector, ICudaEngine, IExecutionContext  # noqa: E402,F401

__all__ = [n for n in dir() if not n.startswith("_") and n not in ("annotations", "Any", "builtins", "json", "os", "struct",
                                                                 "threading", "warnings", "zlib")]
