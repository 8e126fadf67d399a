"""`hipcad bench --triton`: simulated boxes on a real tritonserver next to local pipelines."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.triton


def test_simulated_boxes_against_local_pipelines(triton_server, tmp_path):
    from hipcad.runtime.synth import generate

    files = [str(r.path) for r in generate(tmp_path / "synth", 3, seed=11, size=(640, 480), formats="dicom,jpeg",
                                           progress=False)]
    proc = run_cli("bench", "--triton", triton_server.grpc_url, "--clients", "1", "3", "--per-client", "2",
                   "--inputs", *files, "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    rows = {(r["target"], r["clients"]): r for r in report["runs"]}
    assert set(rows) == {("triton", 1), ("local", 1), ("triton", 3), ("local", 3)}
    for (target, clients), row in rows.items():
        assert row["errors"] == 0 and row["radiographs"] == clients * 2 and row["radiographs_per_s"] > 0
        assert 0 < row["inference_ms"]["p50"] <= row["e2e_ms"]["p50"] and row["e2e_ms"]["p50"] <= row["e2e_ms"]["p95"]
        if target == "triton":
            stats = row["server_stats"]  # exactly the timed radiographs: 2 half-images each
            assert stats["half_images"] == 4 * clients and stats["requests"] == 2 * clients
            assert sum(int(size) * n for size, n in stats["batch_sizes"].items()) == 4 * clients
            assert row["backend"].startswith("triton (Triton hipcad_demo at grpc://")
        else:
            assert row["backend"] == "onnxruntime (CPU)" and "server_stats" not in row
    proc = run_cli("bench", "--triton", "127.0.0.1:9", "--clients", "1", "--inputs", *files)
    assert proc.returncode == 2 and "Triton at grpc://127.0.0.1:9" in proc.stderr
