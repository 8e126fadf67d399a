"""A box reading through a regional Triton server (a real tritonserver, `hipcad serve`): it reads
locally while the server is down or killed mid-run, loses no study, and goes back to the server."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from hipcad.appliance.config import ConfigError, load_config
from hipcad.runtime.model.bundle import DEFAULT_BUNDLE
from tests.appliance.support import (  # noqa: F401 - fixtures
    WorkerProcess,
    drop,
    finished,
    kiosk_client,
    radiographs,
    store_counts,
    wait_for,
    write_config,
)
from tests.helpers import Serve

pytestmark = pytest.mark.triton


def results(config_path) -> list[dict]:
    return kiosk_client(config_path).get("/api/results?limit=500").get_json()["results"]


def health(config_path) -> dict:
    return kiosk_client(config_path).get("/api/health").get_json()


def backend_in_use(config_path) -> str | None:
    return health(config_path)["backend"].get("name")


def read_by(config_path) -> Counter:
    """How many studies each backend read (from the result records the worker wrote)."""
    data = load_config(config_path, environ={}).data_dir / "results"
    return Counter(json.loads(p.read_text())["model"]["backend"] for p in data.glob("*.json"))


def test_fallback_to_local_when_the_server_dies_and_back_when_it_returns(tmp_path, radiographs):
    serve = Serve(DEFAULT_BUNDLE, tmp_path / "server", "--ort-threads", "1")
    config = write_config(tmp_path, DEFAULT_BUNDLE, backend="triton", triton_url=serve.grpc_url, triton_retry_s=1.0,
                          triton_timeout_s=3.0, local_backend="onnxruntime")
    files = iter(radiographs)
    dropped = 0

    def drop_some(n: int) -> None:
        nonlocal dropped
        for _ in range(n):
            drop(next(files), tmp_path / "hot")
            dropped += 1

    with WorkerProcess(config) as worker:
        # 1. the server is not there yet: the box reads on its own
        wait_for(lambda: backend_in_use(config) == "onnxruntime", 120, what="the worker to start locally")
        drop_some(2)
        wait_for(lambda: finished(config) == 2, 60, what="2 studies read locally")
        page = kiosk_client(config).get("/").get_data(as_text=True)
        assert "INFERENCE SERVER UNREACHABLE" in page and "inference: this box (onnxruntime" in page
        # 2. the server starts: the box goes back to it
        serve.start()
        wait_for(lambda: backend_in_use(config) == "triton", 60, what="the return to the server")
        drop_some(4)
        wait_for(lambda: finished(config) == 6, 60, what="4 studies read on the server")
        assert read_by(config) == {"onnxruntime": 2, "triton": 4}
        page = kiosk_client(config).get("/").get_data(as_text=True)
        assert "UNREACHABLE" not in page and f"inference: server grpc://{serve.grpc_url}" in page
        # 3. the server is killed while a dozen studies are queued
        drop_some(12)
        wait_for(lambda: finished(config) >= 7, 60, what="the next study read on the server")
        serve.kill()
        wait_for(lambda: finished(config) == 18, 120, what="every study read despite the crash")
        assert backend_in_use(config) == "onnxruntime"
        h = health(config)
        assert h["backend"]["server"]["in_use"] is False and "failed at run time" in h["backend"]["runtime_fallback"]
        # 4. the server is back: so is the box
        serve.start()
        wait_for(lambda: backend_in_use(config) == "triton", 60, what="the second return to the server")
        drop_some(3)
        wait_for(lambda: finished(config) == 21, 60, what="3 more studies")
        h = health(config)
        metrics = kiosk_client(config).get("/metrics").get_data(as_text=True)
        assert worker.alive()
    serve.stop()

    # no study lost, none read twice, every one done
    counts = store_counts(config)
    assert counts["done"] == dropped == 21 and counts["failed"] == 0 and counts["queued"] == counts["processing"] == 0
    names = [r["file"] for r in results(config)]
    assert len(names) == len(set(names)) == 21
    by = read_by(config)
    assert by["triton"] >= 8 and by["onnxruntime"] >= 3 and sum(by.values()) == 21, by
    assert h["backend"]["name"] == "triton" and h["backend"]["server"]["in_use"] is True
    assert h["counts"]["backend_fallbacks"] == 2 and h["counts"]["backend_returns"] == 2
    assert len(h["backend"]["returns"]) == 2
    assert "hipcad_inference_server_in_use 1" in metrics and "hipcad_backend_returns_total 2" in metrics
    log = worker.text()
    assert "not used" in log and "answers again" in log and "failed at run time" in log


def test_triton_config_keys(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('backend = "triton"\n')
    with pytest.raises(ConfigError, match="needs triton_url"):
        load_config(path, environ={})
    config = load_config(path, environ={"HIPCAD_TRITON_URL": "10.0.0.5:8001", "HIPCAD_TRITON_PROTOCOL": "http",
                                        "HIPCAD_TRITON_TLS": "yes"})
    assert config.backend_options("triton") == {"url": "10.0.0.5:8001", "model": None, "protocol": "http",
                                                "timeout_s": 5.0, "tls": True, "ca": None, "cert": None, "key": None}
    assert config.backend_options("onnxruntime") == {}
    for env, why in [({"HIPCAD_TRITON_PROTOCOL": "udp"}, "grpc or http"),
                     ({"HIPCAD_TRITON_TIMEOUT_S": "15"}, "at most half of watchdog_stale_s"),
                     ({"HIPCAD_TRITON_CERT": str(path)}, "go together"),
                     ({"HIPCAD_TRITON_CA": str(tmp_path / "missing.pem")}, "does not exist"),
                     ({"HIPCAD_LOCAL_BACKEND": "triton"}, "local_backend must be")]:
        with pytest.raises(ConfigError, match=why):
            load_config(path, environ={"HIPCAD_TRITON_URL": "10.0.0.5:8001", **env})
