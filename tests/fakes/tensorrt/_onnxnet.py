"""ONNX graph -> fake INetworkDefinition content, for OnnxParser.parse / parse_from_file.

The layer list is an *approximation* of what NVIDIA's ONNX parser (onnx-tensorrt) creates:
one layer per ONNX node, named after the node (``node_of_<first output>`` for unnamed nodes,
as Polygraphy's example output "node_of_Y" shows), plus one CONSTANT layer per initializer that
a node consumes as a *data* input (Mul/Add/Gemm/MatMul operands...). Initializers consumed as
weights (Conv/ConvTranspose W and B, BatchNormalization parameters) or as attribute-like inputs
(Reshape shape, Reduce axes, Slice starts...) get no layer. The real parser creates more layers
(e.g. Gemm -> MatrixMultiply + ElementWise, Flatten -> Shuffle(s)); the fake keeps the graph
topology and the tensor names/dtypes, which is what hipcad's builder.keep_cam_fp32 relies on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._enums import DataType, ErrorCode, LayerType

# ONNX TensorProto.DataType -> TensorRT DataType (onnx.proto: FLOAT=1, UINT8=2, INT8=3, INT32=6,
# INT64=7, BOOL=9, FLOAT16=10, BFLOAT16=16)
ONNX_DTYPES = {1: DataType.FLOAT, 2: DataType.UINT8, 3: DataType.INT8, 6: DataType.INT32, 7: DataType.INT64,
               9: DataType.BOOL, 10: DataType.HALF, 16: DataType.BF16}

OP_LAYER = {
    "Conv": LayerType.CONVOLUTION, "ConvTranspose": LayerType.DECONVOLUTION,
    "Relu": LayerType.ACTIVATION, "Sigmoid": LayerType.ACTIVATION, "Tanh": LayerType.ACTIVATION,
    "LeakyRelu": LayerType.ACTIVATION, "Elu": LayerType.ACTIVATION, "Selu": LayerType.ACTIVATION,
    "Softplus": LayerType.ACTIVATION, "Softsign": LayerType.ACTIVATION, "HardSigmoid": LayerType.ACTIVATION,
    "Clip": LayerType.ACTIVATION, "HardSwish": LayerType.ACTIVATION,
    "Add": LayerType.ELEMENTWISE, "Sub": LayerType.ELEMENTWISE, "Mul": LayerType.ELEMENTWISE,
    "Div": LayerType.ELEMENTWISE, "Pow": LayerType.ELEMENTWISE, "Max": LayerType.ELEMENTWISE,
    "Min": LayerType.ELEMENTWISE, "Equal": LayerType.ELEMENTWISE, "Greater": LayerType.ELEMENTWISE,
    "Less": LayerType.ELEMENTWISE, "And": LayerType.ELEMENTWISE, "Or": LayerType.ELEMENTWISE,
    "Sqrt": LayerType.UNARY, "Exp": LayerType.UNARY, "Log": LayerType.UNARY, "Abs": LayerType.UNARY,
    "Neg": LayerType.UNARY, "Reciprocal": LayerType.UNARY, "Floor": LayerType.UNARY, "Ceil": LayerType.UNARY,
    "Erf": LayerType.UNARY, "Not": LayerType.UNARY,
    "ReduceSum": LayerType.REDUCE, "ReduceMean": LayerType.REDUCE, "ReduceMax": LayerType.REDUCE,
    "ReduceMin": LayerType.REDUCE, "ReduceProd": LayerType.REDUCE, "ReduceL2": LayerType.REDUCE,
    "ReduceSumSquare": LayerType.REDUCE, "GlobalAveragePool": LayerType.REDUCE, "GlobalMaxPool": LayerType.REDUCE,
    "AveragePool": LayerType.POOLING, "MaxPool": LayerType.POOLING,
    "MatMul": LayerType.MATRIX_MULTIPLY, "Gemm": LayerType.MATRIX_MULTIPLY, "Einsum": LayerType.EINSUM,
    "Flatten": LayerType.SHUFFLE, "Reshape": LayerType.SHUFFLE, "Transpose": LayerType.SHUFFLE,
    "Unsqueeze": LayerType.SHUFFLE, "Squeeze": LayerType.SHUFFLE,
    "Cast": LayerType.CAST, "Identity": LayerType.IDENTITY, "Concat": LayerType.CONCATENATION,
    "Slice": LayerType.SLICE, "Expand": LayerType.SLICE, "Tile": LayerType.SLICE, "Gather": LayerType.GATHER,
    "Shape": LayerType.SHAPE, "Constant": LayerType.CONSTANT, "ConstantOfShape": LayerType.FILL,
    "Softmax": LayerType.SOFTMAX, "BatchNormalization": LayerType.SCALE, "Resize": LayerType.RESIZE,
    "Pad": LayerType.PADDING, "Where": LayerType.SELECT, "TopK": LayerType.TOPK,
    "LayerNormalization": LayerType.NORMALIZATION, "InstanceNormalization": LayerType.NORMALIZATION,
}
# input slots that become layer weights (no CONSTANT layer)
WEIGHT_SLOTS = {"Conv": {1, 2}, "ConvTranspose": {1, 2}, "BatchNormalization": {1, 2, 3, 4},
                "InstanceNormalization": {1, 2}, "LayerNormalization": {1, 2}}
# input slots read as attributes at parse time (must be constant; no CONSTANT layer)
ATTRIBUTE_SLOTS = {"Reshape": {1}, "Unsqueeze": {1}, "Squeeze": {1}, "Slice": {1, 2, 3, 4}, "Expand": {1},
                   "Tile": {1}, "Pad": {1, 2, 3}, "Resize": {1, 2, 3}, "Clip": {1, 2}, "TopK": {1},
                   "ReduceSum": {1}, "ReduceMean": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceProd": {1},
                   "ReduceL2": {1}, "ReduceSumSquare": {1}}
SHAPE_CONSUMER_SLOTS = {"Reshape": {1}, "Expand": {1}, "Tile": {1}, "ConstantOfShape": {0}, "Slice": {1, 2, 3, 4}}


@dataclass
class ParsedTensor:
    name: str
    dtype: DataType
    shape: tuple[int, ...]            # -1 for dynamic dims
    is_shape_tensor: bool = False


@dataclass
class ParsedLayer:
    name: str
    type: LayerType
    op: str                           # the ONNX op type ("" for initializer constants)
    inputs: list[str]
    outputs: list[str]
    weights: dict = field(default_factory=dict)  # {"Weights": count, "Bias": count} for Conv-like layers


@dataclass
class ParsedError:
    code: ErrorCode
    desc: str
    node: int = -1
    node_name: str = ""
    node_operator: str = ""
    func: str = "parse"


@dataclass
class ParsedNetwork:
    inputs: list[ParsedTensor]
    outputs: list[str]
    tensors: dict[str, ParsedTensor]
    layers: list[ParsedLayer]
    onnx_bytes: bytes


def _dims(value_info) -> tuple[int, ...]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return ()
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)


def parse_onnx(data: bytes) -> tuple[ParsedNetwork | None, list[ParsedError]]:
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as err:  # noqa: BLE001 - any protobuf failure is a deserialisation error
        return None, [ParsedError(ErrorCode.MODEL_DESERIALIZE_FAILED, f"Failed to parse ONNX model: {err}",
                                  func="parseFromFile")]
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001
        inferred = model
    graph = inferred.graph
    initializers = {init.name: init for init in graph.initializer}
    value_info = {vi.name: vi for vi in (*graph.input, *graph.output, *graph.value_info)}

    def dtype_of(name: str) -> DataType | None:
        if name in initializers:
            return ONNX_DTYPES.get(initializers[name].data_type)
        vi = value_info.get(name)
        if vi is None or not vi.type.HasField("tensor_type"):
            return DataType.FLOAT
        return ONNX_DTYPES.get(vi.type.tensor_type.elem_type)

    errors: list[ParsedError] = []
    tensors: dict[str, ParsedTensor] = {}
    inputs = []
    for vi in graph.input:
        if vi.name in initializers:
            continue
        dt = dtype_of(vi.name)
        if dt is None:
            errors.append(ParsedError(ErrorCode.UNSUPPORTED_GRAPH, f"Unsupported input data type for {vi.name}"))
            continue
        tensors[vi.name] = ParsedTensor(vi.name, dt, _dims(vi))
        inputs.append(tensors[vi.name])

    layers: list[ParsedLayer] = []
    constant_layers: dict[str, ParsedLayer] = {}
    shape_tensors: set[str] = set()

    def constant_for(name: str) -> None:
        if name in constant_layers:
            return
        init = initializers[name]
        dt = ONNX_DTYPES.get(init.data_type, DataType.FLOAT)
        tensors[name] = ParsedTensor(name, dt, tuple(init.dims))
        layer = ParsedLayer(name, LayerType.CONSTANT, "", [], [name])
        constant_layers[name] = layer
        layers.append(layer)

    for index, node in enumerate(graph.node):
        op = node.op_type
        name = node.name or f"node_of_{node.output[0]}"
        if node.domain not in ("", "ai.onnx") or op not in OP_LAYER:
            errors.append(ParsedError(ErrorCode.UNSUPPORTED_NODE, f"No importer registered for op: {op}",
                                      index, name, op, func="importNode"))
            continue
        data_inputs, weights = [], {}
        for slot, tensor in enumerate(node.input):
            if not tensor:
                continue
            if tensor in initializers and slot in WEIGHT_SLOTS.get(op, ()):
                weights["Weights" if slot == 1 else "Bias"] = int(_count(initializers[tensor]))
                continue
            if slot in ATTRIBUTE_SLOTS.get(op, ()):
                if tensor not in initializers and tensor not in shape_tensors and op not in ("Reshape", "Slice", "Expand"):
                    errors.append(ParsedError(ErrorCode.UNSUPPORTED_NODE_INPUT,
                                              f"Input {slot} ({tensor}) of {op} must be an initializer", index, name, op))
                if tensor in initializers:
                    continue
            if tensor in initializers:
                constant_for(tensor)
            elif tensor not in tensors:
                errors.append(ParsedError(ErrorCode.INVALID_GRAPH, f"Input {tensor} of node {name} is not produced "
                                          "by a preceding node or a graph input", index, name, op))
                continue
            data_inputs.append(tensor)
        for out in node.output:
            dt = dtype_of(out)
            if dt is None:
                errors.append(ParsedError(ErrorCode.UNSUPPORTED_NODE_DATATYPE, f"Unsupported output type of {out}",
                                          index, name, op))
                dt = DataType.FLOAT
            vi = value_info.get(out)
            is_shape = op == "Shape" or (dt in (DataType.INT32, DataType.INT64) and bool(data_inputs)
                                         and all(t in shape_tensors for t in data_inputs))
            if is_shape:
                shape_tensors.add(out)
            tensors[out] = ParsedTensor(out, dt, _dims(vi) if vi is not None else (), is_shape)
        layers.append(ParsedLayer(name, OP_LAYER[op], op, data_inputs, list(node.output), weights))

    for consumer in graph.node:  # tensors consumed as shapes count as shape tensors too
        for slot in SHAPE_CONSUMER_SLOTS.get(consumer.op_type, ()):
            if slot < len(consumer.input) and consumer.input[slot] in tensors:
                tensors[consumer.input[slot]].is_shape_tensor = True

    outputs = []
    for vi in graph.output:
        if vi.name not in tensors:
            errors.append(ParsedError(ErrorCode.INVALID_GRAPH, f"Graph output {vi.name} is not produced by any node"))
            continue
        outputs.append(vi.name)
    if errors:
        return None, errors
    return ParsedNetwork(inputs, outputs, tensors, layers, data), []


def _count(init) -> int:
    n = 1
    for d in init.dims:
        n *= d
    return n
