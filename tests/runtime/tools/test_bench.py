"""``hipcad bench`` never shows a traceback: any --images (also fewer than the input kinds), a
model without compute figures, an unreadable input, missing baseline dependencies; and its report
names the machine and the model."""

from __future__ import annotations

import json
import shutil

import pytest

from hipcad.runtime.tools import bench
from hipcad.runtime.tools.signing import sign_if_configured
from tests.helpers import REPO, run_cli


@pytest.fixture(scope="module")
def four_kinds(tmp_path_factory):
    """Four small radiographs (DICOM and JPEG): four input kinds."""
    from hipcad.runtime.synth import generate

    records = generate(tmp_path_factory.mktemp("bench-inputs"), 4, seed=3, size=(480, 384), formats="dicom,jpeg",
                       progress=False)
    return [str(r.path) for r in records]


def no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr


@pytest.mark.parametrize("images", [1, 3])
def test_fewer_images_than_input_kinds(four_kinds, images):
    proc = run_cli("bench", "--inputs", *four_kinds, "--images", str(images), "--json", timeout=600)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["images"] == images
    assert len(report["per_input_ms"]) == images and all(v["n"] == 1 for v in report["per_input_ms"].values())
    assert len(report["untimed_inputs"]) == 4 - images
    assert report["e2e_ms"]["p50"] > 0 and report["e2e_ms"]["p95"] >= report["e2e_ms"]["p50"]
    # the report names the machine and the model, so that two runs can be compared
    machine, model = report["machine"], report["model"]
    for key in ("host", "cpu", "cores", "memory_gib", "load_average_at_start", "load_average_at_end", "date",
                "onnxruntime", "hipcad"):
        assert machine[key] is not None, key
    assert model["name"] == "demo" and len(model["onnx_sha256"]) == 64 and model["architecture"]
    assert model["backend"] == report["backend"]


def test_more_images_than_kinds_and_the_text_report(four_kinds, tmp_path):
    # a model whose manifest has no compute figures: no efficiency, no crash
    bundle = tmp_path / "no-flops"
    shutil.copytree(REPO / "runtime" / "model" / "demo", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.pop("compute", None)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    sign_if_configured(bundle)  # an edited manifest is signed again, as its maker would
    proc = run_cli("bench", "--model", str(bundle), "--inputs", *four_kinds[:2], "--images", "5", timeout=600)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "model demo (" in text and "onnx sha256" in text and "machine " in text and "cores" in text
    assert "(3 timed)" in text and "(2 timed)" in text and "GFLOP/s" not in text


@pytest.mark.parametrize("value, message", [("0", "must be at least 1"), ("-3", "must be at least 1"),
                                            ("many", "is not a whole number")])
def test_bad_images_values(value, message):
    proc = run_cli("bench", "--images", value)
    no_traceback(proc)
    assert proc.returncode == 2 and message in proc.stderr


def test_bad_model_and_unreadable_input(four_kinds, tmp_path):
    proc = run_cli("bench", "--model", str(tmp_path / "nowhere"), "--inputs", *four_kinds[:1])
    no_traceback(proc)
    assert proc.returncode == 2 and "hipcad bench:" in proc.stderr
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 50)
    proc = run_cli("bench", "--inputs", str(broken), "--images", "2")
    no_traceback(proc)
    assert proc.returncode == 1 and "broken.dcm" in proc.stderr
    proc = run_cli("bench", "--inputs", str(tmp_path / "missing.jpg"))
    no_traceback(proc)
    assert proc.returncode == 1 and "missing.jpg is not a file" in proc.stderr


def test_missing_baseline_dependencies_are_named(monkeypatch, capsys):
    real = bench.importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("pytorch_grad_cam", "timm") else real(name, *a))
    assert bench.main(["--baseline", "--images", "1"]) == 2
    err = capsys.readouterr().err
    assert "--baseline needs timm, grad-cam, which are not installed" in err and "pip install timm grad-cam" in err
