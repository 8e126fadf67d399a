"""FP32 is FP32: TF32 is turned off on every GPU path and read back, and each backend reports the
precision it ran with (which sets its self-test tolerance). ONNX Runtime's GPU providers are driven
through a stand-in session (no GPU here) that hands back what ONNX Runtime's session API returns."""

from __future__ import annotations

import json
import shutil
import types

import numpy as np
import onnxruntime
import pytest

from hipcad.runtime.backends import ort_trt, tf32
from hipcad.runtime.backends.cuda_driver import DriverDevice
from hipcad.runtime.backends.onnxrt import OnnxRuntimeBackend, installed_onnxruntime_distributions
from hipcad.runtime.backends.pyt import TorchBackend
from hipcad.runtime.backends.trt.inspector import engine_layers, format_precision, heatmap_report
from hipcad.runtime.backends.trt.plan_cache import GpuInfo
from hipcad.runtime.errors import BackendUnavailableError, SelfTestError
from hipcad.runtime.model.bundle import load_bundle
from hipcad.runtime.model.selftest import run_selftest
from tests.helpers import DEMO_BUNDLE

CPU_SESSION = onnxruntime.InferenceSession
H100 = DriverDevice(GpuInfo("NVIDIA H100 80GB HBM3", (9, 0)), 80 << 30, "12.4")


# -- torch ---------------------------------------------------------------------------------------
@pytest.fixture
def torch_flags():
    torch = pytest.importorskip("torch")
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision)
    yield torch
    matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = saved


def test_torch_tf32_is_turned_off_with_the_new_api_and_read_back(torch_flags):
    torch = torch_flags
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # PyTorch's default for cuDNN convolutions
    ok, note = tf32.torch_tf32_off(torch)
    assert ok and "cudnn.conv=ieee" in note
    assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "ieee"


def test_torch_tf32_legacy_flags_before_torch_2_9():
    legacy = types.SimpleNamespace(backends=types.SimpleNamespace(
        cuda=types.SimpleNamespace(matmul=types.SimpleNamespace(allow_tf32=True)),
        cudnn=types.SimpleNamespace(allow_tf32=True)))
    ok, note = tf32.torch_tf32_off(legacy)
    assert ok and legacy.backends.cudnn.allow_tf32 is False and legacy.backends.cuda.matmul.allow_tf32 is False
    assert "cudnn.allow_tf32=False" in note


def test_torch_tf32_that_does_not_stick_is_reported():
    class Sticky:
        allow_tf32 = property(lambda self: True, lambda self, value: None)

    stuck = types.SimpleNamespace(backends=types.SimpleNamespace(cuda=types.SimpleNamespace(matmul=Sticky()),
                                                                 cudnn=Sticky()))
    assert tf32.torch_tf32_off(stuck)[0] is False


def test_torch_fp16_on_a_cpu_is_refused_not_run_in_fp32():
    pytest.importorskip("torch")
    bundle = load_bundle(DEMO_BUNDLE)
    with pytest.raises(BackendUnavailableError, match="FP16 needs a CUDA GPU"):
        TorchBackend(bundle, device="cpu", precision="fp16")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU is visible to PyTorch.*FP16 needs one"):
        TorchBackend(bundle, precision="fp16").activate()


# -- NVIDIA_TF32_OVERRIDE ------------------------------------------------------------------------
@pytest.fixture
def process(monkeypatch):
    """A process whose start environment, loaded libraries and hipcad state the test decides."""
    state = types.SimpleNamespace(initial={}, cuda_loaded=False)
    monkeypatch.delenv(tf32.TF32_OVERRIDE, raising=False)
    monkeypatch.setattr(tf32, "_initial_environment", lambda: state.initial)
    monkeypatch.setattr(tf32, "cuda_driver_loaded", lambda: state.cuda_loaded)
    monkeypatch.setitem(tf32._state, "set_before_cuda", False)
    return state


def test_override_from_the_start_environment_counts(process, monkeypatch):
    process.initial = {tf32.TF32_OVERRIDE: "0"}
    process.cuda_loaded = True
    monkeypatch.setenv(tf32.TF32_OVERRIDE, "0")
    assert tf32.process_tf32_off() == (True, "NVIDIA_TF32_OVERRIDE=0 in the environment the process started with")


def test_override_is_set_when_cuda_is_not_loaded_yet(process):
    import os

    ok, how = tf32.process_tf32_off()
    assert ok and "set by hipcad" in how and os.environ[tf32.TF32_OVERRIDE] == "0"
    process.cuda_loaded = True  # later calls, after CUDA came up, still count it
    assert tf32.process_tf32_off()[0]


def test_override_set_after_cuda_was_loaded_does_not_count(process, monkeypatch):
    process.cuda_loaded = True
    assert tf32.process_tf32_off()[0] is False
    monkeypatch.setenv(tf32.TF32_OVERRIDE, "0")  # set by someone, after CUDA was loaded: unknown effect
    ok, why = tf32.process_tf32_off()
    assert not ok and "before NVIDIA_TF32_OVERRIDE=0 was set" in why


def test_cuda_driver_is_seen_in_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15\n")
    assert tf32.cuda_driver_loaded(str(maps))
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert not tf32.cuda_driver_loaded(str(maps))
    assert tf32.cuda_driver_loaded(str(tmp_path / "absent"))  # cannot tell: assume it is


# -- ONNX Runtime ----------------------------------------------------------------------------------
class StandInSession:
    """What onnxruntime.InferenceSession returns on an NVIDIA box, as far as the backend reads it:
    ``get_providers()`` and ``get_provider_options()`` (option values as strings, as ONNX Runtime
    gives them back); ``run`` goes to a real CPU session and is recorded."""

    instances: list = []
    failing: set = set()  # providers that "fail to initialise" (ONNX Runtime then drops them)
    read_back: dict = {}  # provider -> options to return instead of the ones asked for

    def __init__(self, model, options, providers):
        self.asked = providers
        self.runs: list[int] = []
        self.cpu = CPU_SESSION(model, providers=["CPUExecutionProvider"])
        named = [(p, {}) if isinstance(p, str) else p for p in providers]
        self.providers = [(name, opts) for name, opts in named if name not in self.failing]
        StandInSession.instances.append(self)

    def get_providers(self):
        return [name for name, _ in self.providers]

    def get_provider_options(self):
        return {name: self.read_back.get(name, {k: str(v) for k, v in opts.items()}) for name, opts in self.providers}

    def run(self, names, feeds):
        self.runs.append(len(feeds["image"]))
        return self.cpu.run(names, feeds)


@pytest.fixture
def gpu_ort(monkeypatch, tmp_path):
    import onnxruntime as ort

    from hipcad.runtime.backends import cuda_driver

    StandInSession.instances, StandInSession.failing, StandInSession.read_back = [], set(), {}
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", StandInSession)
    monkeypatch.setattr(cuda_driver, "query_device", lambda index=0: H100)
    monkeypatch.setattr(ort_trt, "tensorrt_library_version", lambda: "10.16.0")
    monkeypatch.setattr(tf32, "process_tf32_off", lambda: (True, "NVIDIA_TF32_OVERRIDE=0 (test)"))
    shutil.copytree(DEMO_BUNDLE, tmp_path / "demo")  # engine folders land beside the copy, not in the repository
    return load_bundle(tmp_path / "demo")


def open_ort(bundle, **options) -> OnnxRuntimeBackend:
    backend = OnnxRuntimeBackend(bundle, **options).activate()
    backend.selftest = run_selftest(backend)
    return backend


def test_cuda_provider_is_asked_for_no_tf32_and_reports_what_it_read_back(gpu_ort):
    backend = open_ort(gpu_ort, device="cuda")
    asked = StandInSession.instances[-1].asked
    assert asked[0] == ("CUDAExecutionProvider", {"device_id": 0, "use_tf32": "0"}) and asked[-1] == "CPUExecutionProvider"
    assert backend.device == "CUDA:0" and backend.precision == "fp32"
    assert backend.precision_note == "CUDA provider use_tf32=0 (read back from the session)"
    assert backend.engine_cache is None  # no TensorRT provider, no engine folder
    assert backend.selftest["tolerance"]["logits"] == 1e-4  # FP32's tolerance


def test_auto_takes_the_cuda_provider_without_tf32(gpu_ort):
    backend = open_ort(gpu_ort)
    assert backend.device == "CUDA:0" and backend.precision == "fp32"


@pytest.mark.parametrize("read_back, note", [({"use_tf32": "1"}, "use_tf32=1"), ({}, "has no use_tf32 option")])
def test_cuda_provider_that_keeps_tf32_is_reported_as_tf32(gpu_ort, read_back, note):
    StandInSession.read_back = {"CUDAExecutionProvider": read_back}
    backend = open_ort(gpu_ort, device="cuda")
    assert backend.precision == "tf32" and note in backend.precision_note
    assert backend.selftest["tolerance"] == {"logits": 5e-2, "cam": 5e-2}  # FP16's: TF32 has its mantissa


def test_selftest_tolerance_follows_the_reported_precision(gpu_ort, monkeypatch):
    """Outputs off by 1e-3: within TF32's tolerance, refused at FP32's."""
    original = StandInSession.run
    monkeypatch.setattr(StandInSession, "run", lambda self, names, feeds: [
        out + np.float32(1e-3) for out in original(self, names, feeds)])
    with pytest.raises(SelfTestError, match=r"\(fp32\) failed its self-test"):
        open_ort(gpu_ort, device="cuda")
    StandInSession.read_back = {"CUDAExecutionProvider": {"use_tf32": "1"}}
    assert open_ort(gpu_ort, device="cuda").precision == "tf32"


def test_provider_that_fails_to_initialise_is_not_hidden(gpu_ort):
    StandInSession.failing = {"CUDAExecutionProvider"}
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider failed to initialise"):
        OnnxRuntimeBackend(gpu_ort, device="cuda").activate()
    backend = OnnxRuntimeBackend(gpu_ort).activate()  # auto: says it runs on the CPU
    assert backend.device == "CPU (CUDA provider failed to initialise)" and backend.precision == "fp32"


def test_fp16_is_only_for_the_tensorrt_provider(gpu_ort):
    with pytest.raises(BackendUnavailableError, match="only through the TensorRT provider"):
        OnnxRuntimeBackend(gpu_ort, device="cuda", precision="fp16")


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_tensorrt_provider_caches_engines_by_the_plan_key(gpu_ort, tmp_path, precision):
    import onnxruntime as ort

    backend = open_ort(gpu_ort, device="tensorrt", precision=precision, max_batch=4, cache_dir=tmp_path)
    name, options = StandInSession.instances[-1].asked[0]
    assert name == "TensorrtExecutionProvider"
    folder = tmp_path / "ort-trt" / backend.engine_cache.name
    assert backend.engine_cache == folder and folder.is_dir()
    assert options["trt_engine_cache_enable"] is True and options["trt_engine_cache_path"] == str(folder)
    assert options["trt_timing_cache_enable"] is True and options["trt_timing_cache_path"] == str(folder)
    assert options["trt_fp16_enable"] is (precision == "fp16")
    assert (options["trt_profile_min_shapes"], options["trt_profile_opt_shapes"], options["trt_profile_max_shapes"]) == (
        "image:1x1x256x256", "image:2x1x256x256", "image:4x1x256x256")
    key = json.loads(folder.with_suffix(".json").read_text())["key"]
    assert key["gpu_name"] == "NVIDIA H100 80GB HBM3" and key["compute_capability"] == "9.0"
    assert key["tensorrt"] == "10.16.0" and key["onnxruntime"] == ort.__version__ and key["precision"] == precision
    assert key["onnx_sha256"] == gpu_ort.onnx_sha256 and key["max_batch"] == 4
    assert backend.device == "CUDA:0 (TensorRT provider)" and backend.precision == precision
    assert backend.selftest["agree"]


def test_tensorrt_provider_folders_differ_by_gpu_and_version(gpu_ort, tmp_path, monkeypatch):
    from hipcad.runtime.backends import cuda_driver

    first = OnnxRuntimeBackend(gpu_ort, device="tensorrt", cache_dir=tmp_path).activate().engine_cache
    assert OnnxRuntimeBackend(gpu_ort, device="tensorrt", cache_dir=tmp_path).activate().engine_cache == first
    monkeypatch.setattr(ort_trt, "tensorrt_library_version", lambda: "10.17.0")
    second = OnnxRuntimeBackend(gpu_ort, device="tensorrt", cache_dir=tmp_path).activate().engine_cache
    monkeypatch.setattr(cuda_driver, "query_device", lambda index=0: DriverDevice(GpuInfo("NVIDIA L4", (8, 9)), 0, "12.4"))
    third = OnnxRuntimeBackend(gpu_ort, device="tensorrt", cache_dir=tmp_path).activate().engine_cache
    assert len({first, second, third}) == 3


def test_tensorrt_provider_fp32_without_the_override_is_tf32(gpu_ort, monkeypatch):
    monkeypatch.setattr(tf32, "process_tf32_off", lambda: (False, "CUDA was loaded first"))
    backend = OnnxRuntimeBackend(gpu_ort, device="tensorrt").activate()
    assert backend.engine_cache.is_relative_to(gpu_ort.path / "engines" / "ort-trt")  # beside the bundle by default
    assert backend.precision == "tf32" and "CUDA was loaded first" in backend.precision_note


def test_tensorrt_provider_batches_stay_inside_its_profile(gpu_ort, tmp_path):
    backend = OnnxRuntimeBackend(gpu_ort, device="tensorrt", max_batch=2, cache_dir=tmp_path).activate()
    logits, cam = backend.infer(np.zeros((5, 1, 256, 256), np.uint8))
    assert StandInSession.instances[-1].runs == [2, 2, 1] and logits.shape == (5, 2) and cam.shape[0] == 5


def test_tensorrt_library_version_from_libnvinfer(monkeypatch):
    import ctypes
    import sys

    class Library:
        def getInferLibVersion(self):  # noqa: N802 - the C function's name
            return 101600

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Library())
    assert ort_trt.tensorrt_library_version() == "10.16.0"

    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError, match="libnvinfer.so.10"):
        ort_trt.tensorrt_library_version()


def test_both_onnxruntime_packages_in_one_environment_are_refused(monkeypatch):
    import importlib.metadata

    from hipcad.runtime.backends import onnxrt

    def dists(*names):
        return lambda: [types.SimpleNamespace(metadata={"Name": name}) for name in names]

    scan = installed_onnxruntime_distributions  # cached per process: each environment below is scanned afresh
    try:
        scan.cache_clear()
        monkeypatch.setattr(importlib.metadata, "distributions", dists("numpy", "onnxruntime_gpu", "onnxruntime"))
        assert scan() == ("onnxruntime", "onnxruntime-gpu")
        ok, why = onnxrt.OnnxRuntimeBackend.availability()
        assert not ok and "pip uninstall -y onnxruntime onnxruntime-gpu" in why
        scan.cache_clear()
        monkeypatch.setattr(importlib.metadata, "distributions", dists("numpy", "onnxruntime-gpu"))
        assert onnxrt.OnnxRuntimeBackend.availability() == (True, "")
    finally:
        scan.cache_clear()  # the real environment again for the tests after this one


def test_this_environment_has_one_onnxruntime():
    assert len(installed_onnxruntime_distributions()) == 1


# -- reading an engine's layer precisions ------------------------------------------------------------
@pytest.mark.parametrize("text, precision", [
    ("Row major linear FP32", "fp32"), ("Row major linear FP32 format (kLINEAR)", "fp32"),
    ("Channel major FP16 format where channel % 8 == 0", "fp16"), ("Row major linear FP16 format", "fp16"),
    ("Float", "fp32"), ("Half", "fp16"), ("BFloat16", "bf16"), ("Four wide channel vectorized row major Int8 format", "int8"),
    ("Row major linear Int32", "int"), ("Bool", "int"), ("N/A", "unknown"), (None, "unknown"),
])
def test_format_strings_of_tensorrt_and_myelin_layers(text, precision):
    assert format_precision(text) == precision


def engine(info: dict):
    """An engine whose inspector returns ``info`` (the JSON TensorRT's EngineInspector prints)."""
    inspector = types.SimpleNamespace(execution_context=None, get_engine_information=lambda fmt: json.dumps(info))
    return types.SimpleNamespace(create_engine_inspector=lambda: inspector)


TRT = types.SimpleNamespace(LayerInformationFormat=types.SimpleNamespace(JSON="JSON"))


def test_layers_are_matched_by_onnx_metadata_and_fused_names():
    info = {"Layers": [
        {"Name": "conv + PWN(sig, silu)", "LayerType": "CaskConvolution",
         "Outputs": [{"Name": "silu", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
         "Metadata": "[ONNX Layer: conv]\x1f[ONNX Layer: sig]\x1f[ONNX Layer: silu]"},
        {"Name": "mul_0 + sum_0", "LayerType": "Myelin", "Outputs": [{"Name": "s", "Format/DataType": "Float"}],
         "Metadata": "[ONNX Layer: /head/Mul]\x1e[ONNX Layer: /head/ReduceSum]"},
        {"Name": "relu_cam", "LayerType": "PointWiseV2", "Outputs": [{"Name": "cam", "Format/Datatype": "N/A"}]},
    ], "Bindings": ["image", "logits", "cam"]}
    layers = engine_layers(TRT, engine(info), context=None)
    assert [layer["precision"] for layer in layers] == ["fp16", "fp32", "unknown"]
    pinned = [{"layer": "/head/Mul", "type": "ELEMENTWISE", "onnx_node": "/head/Mul"},
              {"layer": "/head/ReduceSum", "type": "REDUCE", "onnx_node": "/head/ReduceSum"},
              {"layer": "relu_cam", "type": "ACTIVATION", "onnx_node": "relu_cam"},
              {"layer": "head_w", "type": "CONSTANT", "onnx_node": "head_w"},
              {"layer": "si", "type": "ACTIVATION", "onnx_node": "si"}]  # a prefix of "sig": not a match
    report = heatmap_report(layers, pinned)
    assert [row["precision"] for row in report["layers"]] == ["fp32", "fp32", "unknown", "folded", "unverified"]
    assert report["verified"] is False and report["engine_precisions"] == {"fp16": 1, "fp32": 1, "unknown": 1}


def test_names_only_engine_information_verifies_nothing():
    layers = engine_layers(TRT, engine({"Layers": ["conv + PWN(sig, silu)", "mul_cam"], "Bindings": []}), None)
    report = heatmap_report(layers, [{"layer": "mul_cam", "type": "ELEMENTWISE", "onnx_node": "mul_cam"}])
    assert report["layers"][0]["precision"] == "unknown" and report["verified"] is False
