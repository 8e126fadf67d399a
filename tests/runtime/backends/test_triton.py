"""The triton backend against a real tritonserver (NVIDIA PyTriton's, started by `hipcad serve`):
the same logits and heatmaps as local ONNX Runtime, the identity check, TLS."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from hipcad.runtime.backends import open_backend
from hipcad.runtime.backends.triton import ModelIdentityError, TritonBackend, TritonServerError
from hipcad.runtime.errors import BackendUnavailableError
from hipcad.runtime.model.bundle import DEFAULT_BUNDLE, load_bundle
from hipcad.runtime.model.selftest import reference_inputs
from tests.helpers import Serve, run_cli

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def demo():
    return load_bundle(DEFAULT_BUNDLE)


@pytest.fixture(scope="module")
def local(demo):
    with open_backend("onnxruntime", demo) as backend:
        yield backend


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_logits_and_heatmaps_equal_local_onnxruntime(triton_server, demo, local, protocol):
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    with open_backend("triton", demo, url=url, protocol=protocol) as backend:  # activation: identity + self-test
        assert backend.selftest["agree"] and backend.precision == "fp32"
        assert "tritonserver 2.51" in backend.device and backend.served["platform"] == "python"
        # one radiograph, and more half-images than the served max_batch_size (8): split and joined
        for images in (reference_inputs(2, demo.input_hw, seed=3), reference_inputs(11, demo.input_hw, seed=4)):
            logits, cam = backend.infer(images)
            ref_logits, ref_cam = local.infer(images)
            assert logits.shape == ref_logits.shape and cam.shape == ref_cam.shape
            assert np.abs(logits - ref_logits).max() <= 1e-4
            assert np.abs(cam - ref_cam).max() <= 1e-4 * max(1.0, float(np.abs(ref_cam).max()))
        stats = backend.statistics()
        assert int(stats["inference_count"]) >= 13 and stats["batch_stats"]


@pytest.mark.parametrize("model, why", [("impostor", "onnx_sha256"), ("other_point", "operating_point 'high_sensitivity'")])
def test_a_server_serving_another_model_is_refused(triton_server, demo, model, why):
    with pytest.raises(ModelIdentityError, match=why) as info:
        open_backend("triton", demo, url=triton_server.grpc_url, model=model)
    assert "refusing to use it" in str(info.value)


def test_unreachable_server_and_unknown_model_say_so(triton_server, demo):
    from tests.helpers import free_port

    with pytest.raises(TritonServerError, match=f"127.0.0.1:{(port := free_port())}"):
        open_backend("triton", demo, url=f"127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(TritonServerError, match="no ready model 'nope'"):
        open_backend("triton", demo, url=triton_server.http_url, protocol="http", model="nope")
    with pytest.raises(BackendUnavailableError, match="needs the server's address"):
        TritonBackend(demo)


def test_predict_through_the_server_gives_the_local_verdicts(triton_server, tmp_path):
    from hipcad.runtime.synth import generate

    path = generate(tmp_path / "synth", 1, seed=5, size=(640, 480), formats="jpeg", progress=False)[0].path
    lines = {}
    for backend in ("triton", "onnxruntime"):
        extra = ["--triton-url", triton_server.grpc_url] if backend == "triton" else []
        proc = run_cli("predict", str(path), "--json", "--backend", backend, *extra, timeout=120)
        assert proc.returncode == 0, proc.stderr
        lines[backend] = json.loads(proc.stdout)
    assert lines["triton"]["model"]["backend"] == "triton"
    for a, b in zip(lines["triton"]["sides"], lines["onnxruntime"]["sides"]):
        assert a["fracture"] == b["fracture"] and abs(a["probability"] - b["probability"]) < 1e-5
        assert a["heatmap_peak"] == b["heatmap_peak"]
    proc = run_cli("predict", str(path), "--triton-url", triton_server.grpc_url)
    assert proc.returncode == 2 and "--triton-url is for --backend triton" in proc.stderr


def _certificates(folder):
    """A CA, a server certificate for 127.0.0.1 and a client certificate signed by it (openssl)."""
    folder.mkdir()

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=hipcad-test-ca")
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject in (("server", "/CN=localhost"), ("client", "/CN=hipcad-box-1")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {name: str(folder / name) for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_mutual_tls(tmp_path, demo):
    """gRPC with tritonserver's own mutual TLS: only a client with a certificate of the CA gets in;
    the plaintext HTTP endpoint stays on loopback."""
    pem = _certificates(tmp_path / "tls")
    with Serve(DEFAULT_BUNDLE, tmp_path / "serve", "--tls-cert", pem["server.pem"], "--tls-key", pem["server.key"],
               "--tls-client-ca", pem["ca.pem"], "--ort-threads", "1") as server:
        assert "(TLS, client certificates required)" in server.text()
        with open_backend("triton", demo, url=server.grpc_url, ca=pem["ca.pem"], cert=pem["client.pem"],
                          key=pem["client.key"]) as backend:
            assert backend.address.startswith("grpcs://") and backend.selftest["agree"]
        with pytest.raises(TritonServerError):  # TLS, but no client certificate
            open_backend("triton", demo, url=server.grpc_url, ca=pem["ca.pem"], timeout_s=3)
        with pytest.raises(TritonServerError):  # plaintext
            open_backend("triton", demo, url=server.grpc_url, timeout_s=3)
