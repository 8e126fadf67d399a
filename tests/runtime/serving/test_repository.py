"""`hipcad triton-repo`: repositories for the three platforms, every config parsed by Triton's own
model-config protobuf (tritonclient.grpc.model_config_pb2); the TensorRT plan from the plan cache."""

from __future__ import annotations

import hashlib

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from hipcad.runtime.backends.trt import plan_cache
from hipcad.runtime.model.bundle import DEFAULT_BUNDLE, load_bundle
from hipcad.runtime.serving.repository import RepositoryError, config_text, preferred_batch_sizes, validate, write_repository
from tests.helpers import run_cli

DEMO = load_bundle(DEFAULT_BUNDLE)
DEMO_SHA = DEMO.onnx_sha256


def parse(path) -> pb.ModelConfig:
    return text_format.Parse(path.read_text(), pb.ModelConfig())


def fake_plan(bundle, cache, gpu="NVIDIA H100 80GB HBM3", trt="10.13.3", max_batch=8, precision="fp16", sha=None):
    """A plan as `hipcad build-engine` files it (bytes + sidecar); the bytes are not a real engine,
    which Triton never sees here."""
    key = plan_cache.EngineKey.make(bundle, plan_cache.GpuInfo(gpu, (9, 0)), trt, precision, max_batch=max_batch)
    if sha:
        key = plan_cache.EngineKey(**{**key.__dict__, "onnx_sha256": sha})
    return plan_cache.write_plan(bundle, key, b"serialized engine " + gpu.encode(), trt_version=trt, cache_dir=cache)


@pytest.mark.parametrize("platform, key, value, kind, file", [
    ("onnxruntime", "platform", "onnxruntime_onnx", pb.ModelInstanceGroup.KIND_GPU, "model.onnx"),
    ("python", "backend", "python", pb.ModelInstanceGroup.KIND_CPU, "model.py"),
    ("tensorrt", "platform", "tensorrt_plan", pb.ModelInstanceGroup.KIND_GPU, "model.plan"),
])
def test_each_platform_writes_a_config_triton_parses(tmp_path, platform, key, value, kind, file):
    bundle = load_bundle(DEFAULT_BUNDLE)
    extra = {}
    if platform == "tensorrt":
        plan = fake_plan(bundle, tmp_path / "engines")
        extra = {"cache_dir": tmp_path / "engines"}
    model_dir = write_repository(bundle, tmp_path / "repo", platform, max_batch=8, instances=2, **extra)
    config = parse(model_dir / "config.pbtxt")
    assert getattr(config, key) == value and config.name == "hipcad_demo" and model_dir.name == config.name
    assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert not config.dynamic_batching.HasField("default_queue_policy")  # see the README on queue stalls
    assert [(g.kind, g.count) for g in config.instance_group] == [(kind, 2)]
    image, = config.input
    assert (image.name, image.data_type, list(image.dims)) == ("image", pb.TYPE_UINT8, [1, 256, 256])
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("logits", pb.TYPE_FP32, [2]),
                                                                           ("cam", pb.TYPE_FP32, [8, 8])]
    assert config.model_warmup[0].batch_size == 2 and config.model_warmup[0].inputs["image"].zero_data
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["hipcad.onnx_sha256"] == DEMO_SHA and params["hipcad.name"] == "demo"
    assert params["hipcad.operating_point"] == "default" and params["hipcad.threshold"] == repr(DEMO.threshold)
    version = model_dir / "1"
    assert (version / file).is_file() and (version / "manifest.json").is_file()
    if platform != "tensorrt":
        assert hashlib.sha256((version / "model.onnx").read_bytes()).hexdigest() == DEMO_SHA
    else:
        assert (version / "model.plan").read_bytes() == plan.read_bytes()
        assert params["hipcad.precision"] == "fp16" and params["hipcad.gpu"] == "NVIDIA H100 80GB HBM3"
        assert params["hipcad.tensorrt"] == "10.13.3" and not (version / "model.onnx").exists()
    # what the parser read is what was written (nothing dropped or misnamed)
    assert text_format.Parse(text_format.MessageToString(config), pb.ModelConfig()) == config


def test_tensorrt_takes_the_plan_build_engine_made_and_refuses_others(tmp_path):
    bundle = load_bundle(DEFAULT_BUNDLE)
    cache = tmp_path / "engines"
    with pytest.raises(RepositoryError, match="no usable TensorRT plan.*hipcad build-engine"):
        write_repository(bundle, tmp_path / "repo", "tensorrt", cache_dir=cache)
    fake_plan(bundle, cache, sha="0" * 64)  # another graph's plan
    with pytest.raises(RepositoryError, match="built from another ONNX graph"):
        write_repository(bundle, tmp_path / "repo", "tensorrt", cache_dir=cache)
    fake_plan(bundle, cache, max_batch=2)
    small = write_repository(bundle, tmp_path / "repo", "tensorrt", cache_dir=cache)  # the plan's max batch
    assert parse(small / "config.pbtxt").max_batch_size == 2
    with pytest.raises(RepositoryError, match="takes batches of up to 2"):
        write_repository(bundle, tmp_path / "repo", "tensorrt", cache_dir=cache, max_batch=8)
    fake_plan(bundle, cache, gpu="NVIDIA L4", trt="10.4.0", max_batch=8)
    with pytest.raises(RepositoryError, match="several TensorRT plans"):
        write_repository(bundle, tmp_path / "repo", "tensorrt", cache_dir=cache)
    chosen = write_repository(bundle, tmp_path / "repo", "tensorrt", cache_dir=cache, gpu="NVIDIA L4")
    assert parse(chosen / "config.pbtxt").parameters["hipcad.gpu"].string_value == "NVIDIA L4"
    plan = next(p for p in cache.glob("*.plan") if b"NVIDIA L4" in p.read_bytes())
    plan.write_bytes(b"corrupted")
    with pytest.raises(RepositoryError, match="corrupt"):
        write_repository(bundle, tmp_path / "repo", "tensorrt", plan=plan)


def test_validation_refuses_what_triton_would(tmp_path):
    bundle = load_bundle(DEFAULT_BUNDLE)
    good = config_text(bundle, "python")
    validate(good)
    for bad, why in [(good.replace("max_batch_size", "max_batch_sise"), "has no field named"),
                     (good.replace("TYPE_UINT8", "TYPE_UINT9"), "TYPE_UINT9"),
                     (good.replace("KIND_CPU", "KIND_CPUS"), "KIND_CPUS"),
                     (config_text(bundle, "python", max_batch=3).replace("[ 2, 3 ]", "[ 2, 4 ]"), "outside 1..max_batch"),
                     (good.replace('name: "cam"', 'name: "heatmap"'), "outputs must be logits and cam"),
                     (good.replace('key: "hipcad.onnx_sha256"', 'key: "sha"'), "identity parameters missing")]:
        with pytest.raises(RepositoryError, match=why):
            validate(bad)
    with pytest.raises(RepositoryError, match="not a plain name"):
        write_repository(bundle, tmp_path / "repo", "python", model_name="../escape")
    assert not (tmp_path / "escape").exists()
    assert preferred_batch_sizes(8) == [2, 4, 8] and preferred_batch_sizes(6) == [2, 4, 6] and preferred_batch_sizes(1) == [1]


def test_cli(tmp_path):
    proc = run_cli("triton-repo", str(DEFAULT_BUNDLE), "--out", str(tmp_path / "repo"), "--platform", "python",
                   "--max-batch", "4", "--instances", "2", "--ort-threads", "1", "--name", "cad")
    assert proc.returncode == 0, proc.stderr
    config = parse(tmp_path / "repo" / "cad" / "config.pbtxt")
    assert config.max_batch_size == 4 and config.instance_group[0].count == 2
    assert config.parameters["hipcad.ort_threads"].string_value == "1"
    proc = run_cli("triton-repo", str(DEFAULT_BUNDLE), "--out", str(tmp_path / "repo"), "--platform", "tensorrt",
                   "--cache-dir", str(tmp_path / "none"))
    assert proc.returncode == 1 and "no usable TensorRT plan" in proc.stderr
    proc = run_cli("triton-repo", str(DEFAULT_BUNDLE), "--out", str(tmp_path / "repo"), "--max-batch", "0")
    assert proc.returncode == 1 and "--max-batch must be at least 1" in proc.stderr
