"""What precision each layer of a built TensorRT engine runs in, read from the engine itself.

Asking TensorRT to keep a layer in FP32 (``ILayer.precision`` + ``OBEY_PRECISION_CONSTRAINTS``) is
not proof that it did: there are open reports of pins lost inside fused or Myelin regions without the
build failing (NVIDIA/TensorRT #3889, #4505). So after every build the engine is deserialised and
read with the engine inspector (``ICudaEngine.create_engine_inspector``; the Python class is
``tensorrt.EngineInspector``): with ``ProfilingVerbosity.DETAILED`` set at build time and an
execution context whose input shape is set ("Otherwise, values dependent on input shapes will be
displayed as -1 and format information will not be shown", ``IEngineInspector::setExecutionContext``
in NvInferRuntime.h), ``get_engine_information(LayerInformationFormat.JSON)`` gives
``{"Layers": [{"Name", "LayerType", "Inputs": [...], "Outputs": [{"Name", "Dimensions",
"Format/Datatype"}], "Metadata", ...}], "Bindings": [...]}``.

There is no per-layer "Precision" key: a layer's precision is read from its outputs' formats, as
Polygraphy (``backend/trt/util.py``) and trex do - "Row major linear FP32", "Channel major FP16
format where channel % 8 == 0" for classic layers, "Float" / "Half" for Myelin (kgen) layers. A
network layer is found in the engine by its ONNX node in ``Metadata`` (``"[ONNX Layer: <node>]"``,
``\\x1e``-separated, TensorRT >= 10.0) or by its name among the names a fused layer is made of
(``"conv + PWN(sigmoid, mul)"``, ``"{ForeignNode[first...last]}"``).
"""

from __future__ import annotations

import json
import re
from collections import Counter

from hipcad.runtime.errors import EngineBuildError

METADATA = re.compile(r"\[ONNX Layer: ([^\]\x1e\x1f]+)\]")
NAME_SEPARATORS = re.compile(r"\.\.\.|[\s+(),\[\]{}]+")
# substrings of "Format/Datatype", most specific first ("BFloat16" contains "Float")
FORMAT_PRECISIONS = (("BFLOAT16", "bf16"), ("BF16", "bf16"), ("FP16", "fp16"), ("HALF", "fp16"), ("FP8", "fp8"),
                     ("INT8", "int8"), ("FP32", "fp32"), ("FLOAT", "fp32"))
ORDER = ("fp8", "int8", "fp16", "bf16", "fp32")  # a layer with outputs in several: the least precise


def format_precision(text: str | None) -> str:
    """``fp32`` / ``fp16`` / ``bf16`` / ``int8`` / ``fp8`` for a float tensor format, ``int`` for an
    integer or bool one, ``unknown`` when the engine did not say (names-only verbosity, "N/A")."""
    upper = (text or "").upper()
    for needle, precision in FORMAT_PRECISIONS:
        if needle in upper:
            return precision
    return "int" if re.search(r"INT32|INT64|UINT8|BOOL", upper) else "unknown"


def engine_layers(trt, engine, context) -> list[dict]:
    """One record per engine layer: name, type, precision, the ONNX nodes it computes, its output formats."""
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = []
    for layer in info.get("Layers", []):
        if not isinstance(layer, dict):  # LAYER_NAMES_ONLY verbosity: a name, no formats
            layers.append({"name": str(layer), "type": None, "precision": "unknown", "onnx_nodes": [], "outputs": []})
            continue
        formats = [o.get("Format/Datatype", o.get("Format/DataType")) for o in layer.get("Outputs", [])]
        kinds = {format_precision(f) for f in formats}
        floating = [k for k in ORDER if k in kinds]
        precision = floating[0] if floating else ("unknown" if "unknown" in kinds or not kinds else "int")
        if "unknown" in kinds and precision == "fp32":
            precision = "unknown"  # an FP32 output beside one whose format is not shown proves nothing
        layers.append({"name": layer.get("Name", ""), "type": layer.get("LayerType"), "precision": precision,
                       "onnx_nodes": METADATA.findall(str(layer.get("Metadata", ""))), "outputs": formats})
    return layers


def find(layers: list[dict], name: str, onnx_node: str | None) -> list[dict]:
    """The engine layers that compute network layer ``name`` (ONNX node ``onnx_node``)."""
    found = []
    for layer in layers:
        if (onnx_node and onnx_node in layer["onnx_nodes"]) or name in NAME_SEPARATORS.split(layer["name"]):
            found.append(layer)
    return found


def heatmap_report(layers: list[dict], pinned: list[dict]) -> dict:
    """For each layer pinned to FP32 (``{"layer", "type", "onnx_node"}``), the precision the engine
    computes it in: ``fp32`` only when every engine layer computing it has FP32 outputs; a constant
    found in no engine layer was folded into its consumer (which is checked itself); any other
    pinned layer found nowhere is ``unverified``. ``verified`` is True when nothing is worse."""
    rows = []
    for pin in pinned:
        where = find(layers, pin["layer"], pin.get("onnx_node"))
        precisions = {layer["precision"] for layer in where}
        if not where:
            precision = "folded" if pin.get("type") == "CONSTANT" else "unverified"
        elif precisions == {"fp32"}:
            precision = "fp32"
        else:
            worst = [p for p in (*ORDER, "unknown", "int") if p in precisions and p != "fp32"]
            precision = worst[0]
        rows.append({**pin, "precision": precision, "engine_layers": [layer["name"] for layer in where]})
    counts = Counter(layer["precision"] for layer in layers)
    return {"verified": all(row["precision"] in ("fp32", "folded") for row in rows), "layers": rows,
            "engine_layers": len(layers), "engine_precisions": dict(sorted(counts.items()))}


def inspect_plan(trt, logger, plan, input_shape: tuple[int, ...], input_name: str, pinned: list[dict],
                 host_code_allowed: bool = False) -> dict:
    """Deserialise ``plan``, read its layers with the engine inspector and check ``pinned`` (see
    :func:`heatmap_report`). The execution context is ``USER_MANAGED`` (no activation memory is
    allocated; the inspector needs only its shapes). ``host_code_allowed``: for version-compatible
    plans, which embed the lean runtime."""
    runtime = trt.Runtime(logger)
    if host_code_allowed:
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError("TensorRT could not deserialise the plan it has just built (see its messages above)")
    context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    if not context.set_input_shape(input_name, input_shape):
        raise EngineBuildError(f"TensorRT refused input shape {list(input_shape)} on the plan it has just built")
    try:
        return heatmap_report(engine_layers(trt, engine, context), pinned)
    finally:
        del context, engine, runtime  # execution context before engine before runtime
