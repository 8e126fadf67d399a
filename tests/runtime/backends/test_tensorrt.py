"""TensorRT plan cache (pure Python, runs anywhere) and the TensorRT backend: its end-to-end tests run on
the recording fakes of tensorrt and pycuda (tests/fakes) on every machine, and again on a real TensorRT and
GPU where there is one (skipped here, with the reason)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from hipcad.runtime.backends.trt import plan_cache as engine_cache
from hipcad.runtime.backends.trt.builder import PYCUDA_MISSING, TENSORRT_MISSING
from hipcad.runtime.backends.trt.plan_cache import EngineKey, GpuInfo, PlanCacheError
from hipcad.runtime.backends.trt.runner import TensorRTBackend
from hipcad.runtime.errors import BackendUnavailableError
from tests.helpers import TINY_HEATMAP_LAYERS, make_bundle, tiny_graph

ORIN = GpuInfo("Orin", (8, 7))
TRT = "10.3.0"
PLAN = b"\x00fake TensorRT plan\xff" * 64


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path / "demo")


def store(bundle, gpu=ORIN, trt=TRT, precision="fp16", plan=PLAN, cache_dir=None, **options):
    key = EngineKey.make(bundle, gpu, trt, precision, **options)
    return engine_cache.write_plan(bundle, key, plan, trt_version=trt, cache_dir=cache_dir)


def find(bundle, gpu=ORIN, trt=TRT, precision="fp16", **options):
    return engine_cache.lookup(bundle, gpu, trt, precision, **options)


# -- the key ---------------------------------------------------------------------------------
def test_key_digest_covers_every_field(bundle):
    key = EngineKey.make(bundle, ORIN, TRT, "fp16")
    changed = {"onnx_sha256": "0" * 64, "gpu_name": "Xavier", "compute_capability": "7.2", "tensorrt": "10.4.0",
               "precision": "fp32", "version_compatible": True, "max_batch": 4, "recipe": "hipcad-trt-plan/0"}
    assert set(changed) == {field.name for field in dataclasses.fields(EngineKey)}
    digests = {key.digest} | {dataclasses.replace(key, **{name: value}).digest for name, value in changed.items()}
    assert len(digests) == len(changed) + 1


def test_key_rejects_unknown_precision_and_empty_batch(bundle):
    with pytest.raises(ValueError, match="precision"):
        EngineKey.make(bundle, ORIN, TRT, "int8")
    with pytest.raises(ValueError, match="max_batch"):
        EngineKey.make(bundle, ORIN, TRT, "fp16", max_batch=0)


def test_plan_files_are_named_by_the_key_hash_with_a_sidecar(bundle):
    path = store(bundle)
    key = EngineKey.make(bundle, ORIN, TRT, "fp16")
    assert path == bundle.path / "engines" / f"{key.digest}.plan"
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["key"] == dataclasses.asdict(key)
    assert record["plan_sha256"] == hashlib.sha256(PLAN).hexdigest() and record["plan_bytes"] == len(PLAN)
    assert record["tensorrt_built"] == TRT
    assert path.read_bytes() == PLAN


# -- lookup ----------------------------------------------------------------------------------
def test_lookup_returns_the_stored_plan(bundle):
    path = store(bundle)
    assert find(bundle) == path
    data, record = engine_cache.read_plan(path, EngineKey.make(bundle, ORIN, TRT, "fp16"), TRT)
    assert data == PLAN and record["bundle"] == "demo"


def test_nothing_stored_is_a_quiet_miss(bundle):
    problems = []
    assert find(bundle, problems=problems) is None
    assert problems == []


@pytest.mark.parametrize("change", [
    dict(gpu=GpuInfo("Xavier", (7, 2))),
    dict(gpu=GpuInfo("Orin", (8, 6))),
    dict(trt="10.4.0"),
    dict(precision="fp32"),
    dict(max_batch=4),
    dict(version_compatible=True),
], ids=["gpu-name", "compute-capability", "tensorrt-version", "precision", "max-batch", "version-compatible"])
def test_any_changed_key_field_misses(bundle, change):
    store(bundle)
    assert find(bundle, **change) is None


def test_changed_onnx_misses(bundle, tmp_path):
    store(bundle)
    other = make_bundle(tmp_path / "retrained", onnx=b"other weights")
    (other.path / "engines").mkdir()
    for file in (bundle.path / "engines").iterdir():  # even the same files, copied beside the new ONNX
        (other.path / "engines" / file.name).write_bytes(file.read_bytes())
    assert find(other) is None


def test_corrupt_plan_is_never_returned(bundle):
    path = store(bundle)
    damaged = bytearray(PLAN)
    damaged[100] ^= 0xFF
    path.write_bytes(bytes(damaged))
    problems = []
    assert find(bundle, problems=problems) is None
    assert len(problems) == 1 and "corrupt" in problems[0] and str(path) in problems[0]
    with pytest.raises(PlanCacheError, match="corrupt"):
        engine_cache.read_plan(path, EngineKey.make(bundle, ORIN, TRT, "fp16"), TRT)


def test_truncated_plan_is_never_returned(bundle):
    path = store(bundle)
    path.write_bytes(PLAN[: len(PLAN) // 2])
    assert find(bundle) is None


def test_foreign_sidecar_is_refused(bundle):
    wanted = store(bundle)
    foreign = store(bundle, gpu=GpuInfo("Xavier", (7, 2)))
    wanted.with_suffix(".json").write_bytes(foreign.with_suffix(".json").read_bytes())
    wanted.write_bytes(foreign.read_bytes())
    problems = []
    assert find(bundle, problems=problems) is None
    assert "another configuration" in problems[0] and "gpu_name" in problems[0] and "compute_capability" in problems[0]


def test_plan_without_sidecar_is_refused(bundle):
    path = store(bundle)
    path.with_suffix(".json").unlink()
    problems = []
    assert find(bundle, problems=problems) is None
    assert "sidecar" in problems[0]


def test_problems_are_logged(bundle, caplog):
    store(bundle).write_bytes(b"garbage")
    assert find(bundle) is None
    assert any("corrupt" in message for message in caplog.messages)


def test_version_compatible_plan_serves_later_runtimes_of_its_major_version(bundle):
    store(bundle, trt="10.3.0", version_compatible=True)
    assert find(bundle, trt="10.7.0", version_compatible=True) is not None
    assert find(bundle, trt="11.0.0", version_compatible=True) is None
    problems = []
    assert find(bundle, trt="10.1.0", version_compatible=True, problems=problems) is None
    assert "newer than this runtime" in problems[0]


def test_configured_cache_dir_comes_first_and_receives_new_plans(bundle, tmp_path):
    shipped = store(bundle)  # beside the bundle, e.g. shipped by the vendor
    cache = tmp_path / "cache"
    assert find(bundle, cache_dir=cache) == shipped
    written = store(bundle, cache_dir=cache)
    assert written.parent == cache
    assert find(bundle, cache_dir=cache) == written
    assert engine_cache.timing_cache_path(bundle, ORIN, TRT, cache).parent == cache


def test_timing_cache_is_per_gpu_and_tensorrt_version(bundle):
    paths = {engine_cache.timing_cache_path(bundle, gpu, trt)
             for gpu in (ORIN, GpuInfo("Xavier", (7, 2))) for trt in ("10.3.0", "10.4.0")}
    assert len(paths) == 4


# -- atomic writes ---------------------------------------------------------------------------
@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_leaves_no_partial_file(bundle, monkeypatch, failing):
    path = store(bundle)

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match="No space"):
        store(bundle, plan=b"new plan, never completed" * 1000)
    monkeypatch.undo()
    # no temporary file, the old plan untouched; its sidecar was withdrawn first, so it is a miss
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert path.read_bytes() == PLAN
    assert find(bundle) is None


def test_writer_dying_midway_leaves_only_the_old_file(bundle, monkeypatch):
    path = store(bundle)
    real_fdopen = os.fdopen

    class DiesHalfWay:
        def __init__(self, fd, mode):
            self.file = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def fileno(self):
            return self.file.fileno()

        def write(self, data):
            self.file.write(bytes(data)[: len(data) // 2])
            self.file.flush()
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdopen", DiesHalfWay)
    with pytest.raises(OSError, match="Input/output"):
        store(bundle, plan=b"new plan" * 1000)
    monkeypatch.undo()
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert path.read_bytes() == PLAN


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "x.plan"
    target.write_bytes(b"old contents that are longer")
    engine_cache.atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert oct(os.stat(target).st_mode & 0o777) == "0o644"


# -- the backend without TensorRT -------------------------------------------------------------
def test_backend_module_imports_without_tensorrt():
    assert TensorRTBackend.name == "tensorrt"


def test_unavailable_without_tensorrt(monkeypatch, bundle):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    assert TensorRTBackend.availability() == (False, TENSORRT_MISSING)
    with pytest.raises(BackendUnavailableError, match="TensorRT Python package is not installed"):
        TensorRTBackend(bundle).activate()


def test_unavailable_without_pycuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    assert TensorRTBackend.availability() == (False, PYCUDA_MISSING)


def test_availability_here_never_raises_and_says_why():
    ok, why = TensorRTBackend.availability()
    assert ok or ("not installed" in why or "GPU" in why)


def test_registry_refuses_it_with_the_reason(monkeypatch, bundle):
    from hipcad.runtime.backends import open_backend

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a box without TensorRT, even where it is installed
    with pytest.raises(BackendUnavailableError, match="TensorRT Python package is not installed"):
        open_backend("tensorrt", bundle)


def test_cuda_thread_owns_the_context_and_runs_every_job(monkeypatch):
    """All CUDA work - context push, jobs from any thread, release, pop - happens on one thread."""
    import threading

    from hipcad.runtime.backends.trt.cuda_thread import CudaThread
    from hipcad.runtime.errors import HipcadError

    log = []

    def note(event):
        log.append((event, threading.current_thread().name))

    class Context:
        def push(self):
            note("push")

        @staticmethod
        def pop():
            note("pop")

        def detach(self):
            note("detach")

    class Device:
        def __init__(self, index):
            pass

        def retain_primary_context(self):
            note("retain")
            return Context()

    driver = types.SimpleNamespace(init=lambda: None, Device=Device, Context=Context)
    monkeypatch.setitem(sys.modules, "pycuda", types.SimpleNamespace(driver=driver))
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    worker = CudaThread(0, on_stop=lambda: note("release"))
    with ThreadPoolExecutor(8) as pool:
        names = set(pool.map(lambda i: worker.run(lambda: threading.current_thread().name), range(32)))
    assert names == {"hipcad-tensorrt"}
    with pytest.raises(ZeroDivisionError):  # a job's exception reaches its caller; the thread goes on
        worker.run(lambda: 1 / 0)
    worker.stop()
    assert [event for event, _ in log] == ["retain", "push", "release", "pop", "detach"]
    assert {thread for _, thread in log} == {"hipcad-tensorrt"}
    with pytest.raises(HipcadError, match="deactivated"):
        worker.run(lambda: None)
    worker.stop()  # idempotent


# -- end to end: on the fakes everywhere, on TensorRT + a GPU where present ---------------------------
@pytest.fixture(params=["fake", pytest.param("real", marks=[pytest.mark.gpu, pytest.mark.tensorrt])])
def gpu_bundle(request, tmp_path):
    """The tiny SiLU -> Mul -> ReduceSum graph (tests/helpers.py), with the fake or the real TensorRT."""
    pytest.importorskip("onnx")
    if request.param == "fake":
        request.getfixturevalue("fake_gpu")
    else:
        pytest.importorskip("tensorrt", reason="needs TensorRT")
        pytest.importorskip("pycuda.driver", reason="needs pycuda")
        ok, why = TensorRTBackend.availability()
        if not ok:
            pytest.skip(why)
    return make_bundle(tmp_path / "tiny", onnx=tiny_graph(64), hw=64)


def reference(bundle, batch):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["logits", "cam"], {"image": batch})


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_backend_matches_onnxruntime(gpu_bundle, tmp_path, precision, tolerance):
    import tensorrt as trt

    if precision == "fp16" and not hasattr(trt.BuilderFlag, "FP16"):
        pytest.skip(f"TensorRT {trt.__version__} has no weak-typed FP16")
    batch = np.random.default_rng(1).integers(0, 256, (5, 1, 64, 64), dtype=np.uint8)  # > max batch: chunked
    with TensorRTBackend(gpu_bundle, precision=precision, cache_dir=tmp_path / "cache") as backend:
        logits, cam = backend.infer(batch)
        assert backend.precision == precision and backend.max_batch == 2
        record = json.loads(backend.plan_path.with_suffix(".json").read_text())
    want_logits, want_cam = reference(gpu_bundle, batch)
    np.testing.assert_allclose(logits, want_logits, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(cam, want_cam, rtol=tolerance, atol=tolerance * float(np.abs(want_cam).max()))
    assert record["tf32"] is False and "TF32" not in record["builder_flags"]
    heatmap = record["heatmap"]
    if precision == "fp16":
        assert {row["layer"] for row in heatmap["layers"]} == TINY_HEATMAP_LAYERS
        assert heatmap["verified"] is True, heatmap
        assert "heatmap layers FP32 in the built engine" in backend.precision_note
    else:
        assert heatmap["layers"] == [] and "TF32 off" in backend.precision_note


def test_cached_plan_is_reused_and_threads_share_one_cuda_thread(gpu_bundle, tmp_path):
    cache = tmp_path / "cache"
    with TensorRTBackend(gpu_bundle, precision="fp32", cache_dir=cache) as first:
        plan = first.plan_path
    stamp = plan.stat().st_mtime_ns
    batch = np.random.default_rng(2).integers(0, 256, (2, 1, 64, 64), dtype=np.uint8)
    with TensorRTBackend(gpu_bundle, precision="fp32", cache_dir=cache, allow_build=False) as backend:
        assert backend.plan_path == plan and plan.stat().st_mtime_ns == stamp
        with ThreadPoolExecutor(8) as pool:  # like Flask's request threads: none of them touches CUDA
            results = list(pool.map(lambda _: backend.infer(batch), range(16)))
    for logits, cam in results:
        np.testing.assert_array_equal(logits, results[0][0])
        np.testing.assert_array_equal(cam, results[0][1])


def test_corrupt_cached_plan_is_refused_when_building_is_not_allowed(gpu_bundle, tmp_path):
    cache = tmp_path / "cache"
    with TensorRTBackend(gpu_bundle, precision="fp32", cache_dir=cache) as backend:
        plan = backend.plan_path
    plan.write_bytes(plan.read_bytes()[:-1000])
    with pytest.raises(BackendUnavailableError, match="corrupt"):
        TensorRTBackend(gpu_bundle, precision="fp32", cache_dir=cache, allow_build=False).activate()


def test_version_compatible_plan_is_built_and_loaded(gpu_bundle, tmp_path):
    batch = np.random.default_rng(4).integers(0, 256, (2, 1, 64, 64), dtype=np.uint8)
    with TensorRTBackend(gpu_bundle, precision="fp32", cache_dir=tmp_path, version_compatible=True) as backend:
        logits, _ = backend.infer(batch)
        record = json.loads(backend.plan_path.with_suffix(".json").read_text())
    assert record["key"]["version_compatible"] is True and "VERSION_COMPATIBLE" in record["builder_flags"]
    np.testing.assert_allclose(logits, reference(gpu_bundle, batch)[0], rtol=1e-3, atol=1e-3)
