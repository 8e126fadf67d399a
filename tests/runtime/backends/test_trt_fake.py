"""The TensorRT builder, the engine inspection, the plan cache and the backend's CUDA life cycle, run on
the recording fakes of ``tensorrt`` and ``pycuda`` (tests/fakes, see its README): what hipcad asks
TensorRT and pycuda for, call by call, with the real bindings' names, arguments and return types.
No GPU; the fakes run the ONNX graph with ONNX Runtime on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hipcad.runtime.backends.trt import builder
from hipcad.runtime.backends.trt.runner import TensorRTBackend
from hipcad.runtime.errors import EngineBuildError, HipcadError
from hipcad.runtime.model.bundle import load_bundle
from hipcad.runtime.tools import build_engine as build_engine_cli
from tests.helpers import DEMO_BUNDLE, DEMO_HEATMAP_LAYERS, FAKES, TINY_HEATMAP_LAYERS, make_bundle, tiny_graph

CUDA_THREAD = "hipcad-tensorrt"


@pytest.fixture
def fakes(fake_gpu):
    return fake_gpu


@pytest.fixture
def tiny(tmp_path, fakes):
    return make_bundle(tmp_path / "tiny", onnx=tiny_graph(64), hw=64)


def sidecar(plan) -> dict:
    return json.loads(plan.with_suffix(".json").read_text())


def test_the_fakes_are_what_tensorrt_and_pycuda_import(fakes):
    import pycuda.driver
    import tensorrt

    assert (tensorrt, pycuda.driver) == fakes
    assert Path(tensorrt.__file__).is_relative_to(FAKES) and Path(pycuda.driver.__file__).is_relative_to(FAKES)


def test_build_asks_tensorrt_for_what_the_plan_needs(tiny, tmp_path, fakes):
    trt, _ = fakes
    plan = builder.build_engine(tiny, "fp16", cache_dir=tmp_path / "cache", progress=False)
    record = trt.RECORD
    assert record.names()[:3] == ["Logger", "Builder", "Builder.create_network"]
    assert record.last("Builder.create_network").args == {"flags": 0}
    assert record.last("IBuilderConfig.set_memory_pool_limit").args == {"pool": trt.MemoryPoolType.WORKSPACE,
                                                                       "pool_size": 1024 << 20}
    assert record.last("IBuilderConfig.clear_flag").args["flag"] is trt.BuilderFlag.TF32
    assert record.last("IBuilderConfig.profiling_verbosity").args["value"] is trt.ProfilingVerbosity.DETAILED
    shape = record.last("IOptimizationProfile.set_shape").args
    assert (shape["min"], shape["opt"], shape["max"]) == ((1, 1, 64, 64), (2, 1, 64, 64), (2, 1, 64, 64))
    assert {c.args["flag"] for c in record.calls("IBuilderConfig.set_flag")} == {
        trt.BuilderFlag.FP16, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS}
    assert {c.args["layer"] for c in record.calls("ILayer.precision")} == TINY_HEATMAP_LAYERS
    assert {c.args["layer"] for c in record.calls("ILayer.set_output_type")} == TINY_HEATMAP_LAYERS
    built = record.last("Builder.build_serialized_network")
    assert trt.BuilderFlag.TF32 not in built.args["flags"] and built.result > 0
    # one logger for the builder, the parser and the runtime that inspects the engine
    assert record.names().count("Logger") == 1
    assert record.last("Runtime").args["logger"] is record.last("Builder").args["logger"]
    inspected = record.last("EngineInspector.execution_context").args["value"]
    assert record.last("ICudaEngine.create_execution_context").args["strategy"] is \
        trt.ExecutionContextAllocationStrategy.USER_MANAGED and inspected is not None
    assert record.last("EngineInspector.get_engine_information").args["format"] is trt.LayerInformationFormat.JSON
    info = sidecar(plan)
    assert info["key"]["precision"] == "fp16" and info["tf32"] is False and info["profiling_verbosity"] == "DETAILED"
    assert {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= set(info["builder_flags"]) and "TF32" not in info["builder_flags"]
    assert info["heatmap"]["verified"] is True
    assert {row["layer"]: row["precision"] for row in info["heatmap"]["layers"]} == dict.fromkeys(TINY_HEATMAP_LAYERS, "fp32")
    assert info["heatmap"]["engine_precisions"]["fp16"] >= 3  # the shared feature map and the logits: FP16
    # the timing cache written after the first build is accepted by the second
    record.clear()
    builder.build_engine(tiny, "fp16", cache_dir=tmp_path / "cache", progress=False)
    assert record.calls("IBuilderConfig.set_timing_cache")[0].args["result"] is True


def test_fp32_plan_has_no_fp16_layer_and_no_tf32(tiny, tmp_path, fakes):
    trt, _ = fakes
    info = sidecar(builder.build_engine(tiny, "fp32", cache_dir=tmp_path, progress=False))
    assert info["tf32"] is False and "FP16" not in info["builder_flags"]
    assert set(info["heatmap"]["engine_precisions"]) <= {"fp32", "int"} and info["heatmap"]["layers"] == []
    assert not trt.RECORD.calls("ILayer.precision")


@pytest.mark.parametrize("fusion, lost", [
    (None, set()),
    ("pointwise", {"div", "node_mul_1128"}),  # the heatmap's Mul fused into the FP16 conv + SiLU region
    # one FP16 Myelin region after the last convolution; the constant `div` folded into it is not named
    # by any engine layer, its consumer node_mul_1128 is checked instead
    ("myelin_tail", DEMO_HEATMAP_LAYERS - {"div"}),
])
def test_heatmap_pins_are_checked_in_the_built_engine(tmp_path, fakes, fusion, lost):
    """On the shipped demo model (the real export): a build whose pins TensorRT lost is refused."""
    trt, _ = fakes
    trt.FAKE.fusion = fusion
    bundle = load_bundle(DEMO_BUNDLE)
    if not lost:
        info = sidecar(builder.build_engine(bundle, "fp16", cache_dir=tmp_path, progress=False))
        assert info["heatmap"]["verified"] and {r["layer"] for r in info["heatmap"]["layers"]} == DEMO_HEATMAP_LAYERS
        return
    with pytest.raises(EngineBuildError, match="did not keep the heatmap in FP32") as refused:
        builder.build_engine(bundle, "fp16", cache_dir=tmp_path, progress=False)
    for layer in lost:
        assert layer in str(refused.value)
    assert not list(tmp_path.glob("*.plan"))  # not stored
    with pytest.warns(UserWarning, match="not verified FP32"):
        plan = builder.build_engine(bundle, "fp16", cache_dir=tmp_path, progress=False, allow_unverified_heatmap=True)
    rows = {r["layer"]: r["precision"] for r in sidecar(plan)["heatmap"]["layers"]}
    assert {layer for layer, precision in rows.items() if precision not in ("fp32", "folded")} == lost


def test_stored_unverified_plan_says_so_when_loaded(tiny, tmp_path, fakes):
    trt, _ = fakes
    trt.FAKE.fusion = "pointwise"
    with pytest.warns(UserWarning):
        builder.build_engine(tiny, "fp16", cache_dir=tmp_path, progress=False, allow_unverified_heatmap=True)
    with TensorRTBackend(tiny, precision="fp16", cache_dir=tmp_path, allow_build=False) as backend:
        assert backend.precision == "fp16" and "heatmap NOT verified FP32" in backend.precision_note


def test_pins_no_implementation_obeys_fail_the_build(tiny, tmp_path, fakes):
    trt, _ = fakes
    trt.FAKE.unsatisfiable_pins = {"node_cam_sum"}  # OBEY_PRECISION_CONSTRAINTS: the build fails
    with pytest.raises(EngineBuildError, match="build of .* failed"):
        builder.build_engine(tiny, "fp16", cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.glob("*.plan"))


def test_build_past_its_deadline_is_cancelled_by_the_progress_monitor(tiny, tmp_path, fakes):
    with pytest.raises(EngineBuildError, match="cancelled: past its time limit"):
        builder.build_engine(tiny, "fp32", cache_dir=tmp_path, progress=False, deadline=0.0)


def test_refused_optimisation_profile_is_an_error(tiny, tmp_path, fakes, monkeypatch):
    trt, _ = fakes
    monkeypatch.setattr(trt.IBuilderConfig, "add_optimization_profile", lambda self, profile: -1)
    with pytest.raises(EngineBuildError, match="refused the optimisation profile"):
        builder.build_engine(tiny, "fp32", cache_dir=tmp_path, progress=False)


def test_backend_life_cycle_runs_on_one_thread_and_frees_everything(tiny, tmp_path, fakes):
    trt, cuda = fakes
    batch = np.random.default_rng(1).integers(0, 256, (5, 1, 64, 64), dtype=np.uint8)  # > max batch: chunked
    with TensorRTBackend(tiny, precision="fp16", cache_dir=tmp_path) as backend:
        backend.infer(batch)
        assert backend.device.startswith("CUDA:0 NVIDIA A100") and backend.precision == "fp16"
    contextual = [c for c in cuda.RECORD if c.name not in ("init", "Device", "Device.count")]
    assert {c.thread for c in contextual} == {CUDA_THREAD}
    assert {c.thread for c in trt.RECORD} == {CUDA_THREAD}
    contexts = [c.name for c in cuda.RECORD if c.name.startswith("Context.")]
    assert contexts[0] == "Context.push" and contexts[-2:] == ["Context.pop", "Context.detach"]
    runs = trt.RECORD.calls("IExecutionContext.execute_async_v3")
    assert len(runs) == 4 and all(c.result and c.args["stream_handle"] != 0 for c in runs)  # warm-up + 3 chunks
    assert all(c.args["pagelocked"] for c in cuda.RECORD if c.name.startswith("memcpy_"))
    assert cuda._fake_leaks() == {"allocations": [], "streams": [], "leaked": []}
    assert cuda._fake_thread_stack() == []


def test_refused_tensor_address_is_an_error(tiny, tmp_path, fakes, monkeypatch):
    trt, _ = fakes
    with TensorRTBackend(tiny, precision="fp32", cache_dir=tmp_path) as backend:
        monkeypatch.setattr(trt.IExecutionContext, "set_tensor_address", lambda self, name, memory: False)
        with pytest.raises(HipcadError, match="refused the device address"):
            backend.infer(np.zeros((1, 1, 64, 64), np.uint8))


def test_plan_of_another_tensorrt_version_is_not_loaded(tiny, tmp_path, fakes, monkeypatch):
    trt, _ = fakes
    monkeypatch.setattr(trt, "__version__", "10.3.0")
    with TensorRTBackend(tiny, precision="fp32", cache_dir=tmp_path):
        pass
    monkeypatch.setattr(trt, "__version__", "10.16.0.72")
    with pytest.raises(HipcadError, match="none has been built"):  # the key names the version: a miss
        TensorRTBackend(tiny, precision="fp32", cache_dir=tmp_path, allow_build=False).activate()


def test_version_compatible_plan_loads_on_a_later_runtime_with_host_code_allowed(tiny, tmp_path, fakes, monkeypatch):
    trt, _ = fakes
    monkeypatch.setattr(trt, "__version__", "10.3.0")
    with TensorRTBackend(tiny, precision="fp16", cache_dir=tmp_path, version_compatible=True) as old:
        plan = old.plan_path
    assert trt.BuilderFlag.VERSION_COMPATIBLE in trt.RECORD.last("Builder.build_serialized_network").args["flags"]
    monkeypatch.setattr(trt, "__version__", "10.16.0.72")
    trt.RECORD.clear()
    with TensorRTBackend(tiny, precision="fp16", cache_dir=tmp_path, version_compatible=True, allow_build=False) as new:
        assert new.plan_path == plan
        new.infer(np.zeros((2, 1, 64, 64), np.uint8))
    names = trt.RECORD.names()
    assert "Builder" not in names
    assert names.index("Runtime.engine_host_code_allowed") < names.index("Runtime.deserialize_cuda_engine")
    # the same bytes on a runtime that does not allow host code: refused, as TensorRT refuses lean-runtime plans
    assert trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(plan.read_bytes()) is None


def test_build_engine_command_reports_the_heatmap_precision(tmp_path, fakes, capsys):
    args = [str(DEMO_BUNDLE), "--cache-dir", str(tmp_path), "--json"]
    assert build_engine_cli.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["built"] and report["precision"] == "fp16" and report["tf32"] is False
    assert report["heatmap_fp32_verified"] is True
    assert {row["layer"] for row in report["heatmap_layers"]} == DEMO_HEATMAP_LAYERS
    assert build_engine_cli.main(args) == 0 and json.loads(capsys.readouterr().out)["built"] is False  # cached


def test_build_engine_command_refuses_a_plan_whose_heatmap_is_not_fp32(tmp_path, fakes, capsys):
    trt, _ = fakes
    trt.FAKE.fusion = "pointwise"
    args = [str(DEMO_BUNDLE), "--cache-dir", str(tmp_path)]
    assert build_engine_cli.main(args) == 1
    err = capsys.readouterr().err
    assert "node_mul_1128 is fp16" in err and "not stored" in err
    with pytest.warns(UserWarning):
        assert build_engine_cli.main([*args, "--allow-unverified-heatmap"]) == 0
    out = capsys.readouterr()
    assert "heatmap NOT verified FP32" in out.out and "WARNING" in out.err


def test_fake_tensorrt_is_as_strict_as_the_bindings(fakes, tmp_path):
    """What makes a misspelt or misused call in hipcad fail here as it would on a GPU box."""
    trt, cuda = fakes
    logger = trt.Logger(trt.Logger.ERROR)
    builder_ = trt.Builder(logger=logger)  # the binding's argument name
    network = builder_.create_network(flags=0)
    config = builder_.create_builder_config()
    with pytest.raises(AttributeError):
        config.profiling_verbosty = trt.ProfilingVerbosity.DETAILED  # misspelt property: no instance __dict__
    with pytest.raises(AttributeError):
        network.num_layers = 3  # read-only property
    with pytest.raises(TypeError):
        network.num_layers()  # a property, not a method
    with pytest.raises(TypeError):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size=1)  # the argument is pool_size
    with pytest.raises(TypeError):
        config.set_flag(6)  # an int is not a BuilderFlag
    with pytest.raises(AttributeError):
        trt.BuilderFlag.FP_16
    with pytest.raises(AttributeError):
        trt.IEngineInspector  # noqa: B018 - the Python class is EngineInspector
    with pytest.raises(TypeError):
        trt.ICudaEngine()  # no Python constructor
    assert config.get_flag(trt.BuilderFlag.TF32)  # "Enabled by default"
    assert config.profiling_verbosity is trt.ProfilingVerbosity.LAYER_NAMES_ONLY
    cuda.init()
    with pytest.raises(TypeError):
        cuda.Device(ordinal=0)  # Boost.Python: positional only
    with pytest.raises(cuda.LogicError, match="invalid device context"):
        cuda.mem_alloc(16)  # no current context


def test_the_fakes_stay_out_of_tests_that_did_not_ask_for_them():
    import sys

    assert str(FAKES) not in sys.path
    files = [getattr(module, "__file__", None) or "/" for module in list(sys.modules.values())]
    assert not any(Path(file).is_relative_to(FAKES) for file in files)
