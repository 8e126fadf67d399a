"""``hipcad gpu-check``: one JSON report whatever the machine has, and an exit status that says what it
could not measure. On this CPU-only machine the real run measures nothing on a GPU; with the recording
fakes of tensorrt and pycuda (tests/fakes) its TensorRT rows are exercised end to end."""

from __future__ import annotations

import json
import shutil

import pytest

from hipcad.runtime.backends import tf32
from hipcad.runtime.tools import gpu_check
from tests.helpers import DEMO_BUNDLE, make_bundle, run_cli, tiny_graph

VARIANTS = [variant for variant, _, _ in gpu_check.VARIANTS]
OTHERS = [v for v in VARIANTS if not v.startswith("tensorrt-")]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA driver")
def test_cpu_only_run_says_what_it_could_not_measure(tmp_path):
    out = tmp_path / "report" / "gpu-check.json"
    proc = run_cli("gpu-check", str(DEMO_BUNDLE), "--out", str(out), "--cache-dir", str(tmp_path / "engines"))
    assert proc.returncode == 3, proc.stdout + proc.stderr  # 3: nothing failed, something not measured
    report = json.loads(out.read_text())
    assert report["schema"] == "hipcad-gpu-check/1" and report["status"] == "incomplete" and report["exit_status"] == 3
    assert report["failures"] == {}
    assert set(report["not_measured"]) == {*VARIANTS, "gpu"}
    assert "no NVIDIA GPU found" in report["not_measured"]["gpu"]
    for variant in VARIANTS:
        assert report["backends"][variant]["status"] == "not_measured" and report["backends"][variant]["reason"]
    assert "sees no CUDA GPU" in report["backends"]["torch-cuda-fp16"]["reason"] or \
        "not installed" in report["backends"]["torch-cuda-fp16"]["reason"]
    assert "has no CUDAExecutionProvider" in report["backends"]["onnxruntime-cuda-fp32"]["reason"]
    assert report["reference"] == {"backend": "onnxruntime", "device": "CPU", "precision": "fp32", "images": 16}
    assert report["versions"]["onnxruntime"]["distributions"] == ["onnxruntime"]
    assert report["bundle"]["name"] == "demo" and report["tf32_override"]["in_force"] is True
    assert "could not measure" in proc.stderr and "NOT MEASURED" in proc.stdout and f"report: {out}" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.fixture
def clean_env(monkeypatch):
    """gpu-check sets NVIDIA_TF32_OVERRIDE for its process; keep that out of the other tests."""
    monkeypatch.delenv(tf32.TF32_OVERRIDE, raising=False)
    monkeypatch.setitem(tf32._state, "set_before_cuda", False)


def run(tmp_path, *extra, bundle=DEMO_BUNDLE) -> tuple[int, dict]:
    out = tmp_path / "gpu-check.json"
    code = gpu_check.main([str(bundle), "--out", str(out), "--cache-dir", str(tmp_path / "engines"),
                           "--iterations", "2", *extra])
    return code, json.loads(out.read_text())


def test_tensorrt_rows_on_the_fakes(tmp_path, fake_gpu, clean_env):
    tiny = make_bundle(tmp_path / "tiny", onnx=tiny_graph(64), hw=64)
    code, report = run(tmp_path, *(f"--skip={v}" for v in OTHERS), bundle=tiny.path)
    assert code == 3 and report["status"] == "incomplete" and set(report["not_measured"]) == set(OTHERS)
    assert report["gpu"]["name"] == "NVIDIA A100-SXM4-80GB" and report["gpu"]["source"] == "pycuda"
    for variant, precision in (("tensorrt-fp16", "fp16"), ("tensorrt-fp32", "fp32")):
        row = report["backends"][variant]
        assert row["status"] == "ok", row
        assert row["precision"] == precision and row["selftest"]["agree"] and row["parity"]["agree"]
        assert row["parity"]["precision"] == precision  # the tolerance follows the precision that ran
        assert set(row["latency_ms"]) == {"1", "2", "8"} and all(v["n"] == 2 for v in row["latency_ms"].values())
        assert row["build"]["built_now"] is True and row["build"]["tf32"] is False and row["build"]["seconds"] >= 0
    heatmap = report["backends"]["tensorrt-fp16"]["build"]["heatmap"]
    assert heatmap["verified"] and {r["precision"] for r in heatmap["layers"]} <= {"fp32", "folded"}
    _, again = run(tmp_path, *(f"--skip={v}" for v in OTHERS), bundle=tiny.path)
    assert again["backends"]["tensorrt-fp16"]["build"]["built_now"] is False  # the plans were cached


def test_heatmap_not_kept_in_fp32_fails_the_check(tmp_path, fake_gpu, clean_env):
    trt, _ = fake_gpu
    trt.FAKE.fusion = "pointwise"
    code, report = run(tmp_path, *(f"--skip={v}" for v in OTHERS))
    assert code == 1 and report["status"] == "failed"
    assert "did not keep the heatmap in FP32" in report["failures"]["tensorrt-fp16"]
    assert report["backends"]["tensorrt-fp32"]["status"] == "ok"


def test_spent_time_budget_is_reported_not_hidden(tmp_path, fake_gpu, clean_env):
    code, report = run(tmp_path, "--budget-s", "0")
    assert code == 3 and "time budget spent" in report["not_measured"]["tensorrt-fp16"]


def test_unreadable_bundle_still_writes_the_report(tmp_path, clean_env):
    out = tmp_path / "gpu-check.json"
    assert gpu_check.main([str(tmp_path / "no-such-bundle"), "--out", str(out)]) == 2
    report = json.loads(out.read_text())
    assert report["status"] == "error" and "no-such-bundle" in report["error"] and "versions" in report
