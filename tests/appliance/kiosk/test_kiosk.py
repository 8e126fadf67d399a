"""hipcad kiosk without a browser: authentication, CSRF, headers, JSON API, metrics, read-first."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
import time

import pytest
from PIL import Image
from werkzeug.security import generate_password_hash

from hipcad.appliance.config import Config, ConfigError
from hipcad.appliance.kiosk import create_app
from hipcad.appliance.kiosk.cli import main
from hipcad.appliance.storage.files import DataDir
from hipcad.appliance.storage.store import Store
from hipcad.runtime.model.notice import UNTRAINED as UNTRAINED_NOTICE

PASSWORD = "correct horse battery"
UNTRAINED = {"name": "b0", "label": "b0 (UNTRAINED random weights - output is meaningless, not for clinical use)",
             "trained": False, "synthetic_demo": False, "operating_point": "default", "threshold": 0.5,
             "backend": "onnxruntime", "device": "CPU"}


def make_config(tmp_path, **overrides) -> Config:
    values = {"hot_folder": tmp_path / "hot", "data_dir": tmp_path / "data", "model": str(tmp_path / "no-model"),
              "kiosk_secret_key": "test", "kiosk_allow_unauthenticated_loopback": True, **overrides}
    return Config(**values).validate()


def populate(config: Config, n_done: int = 3, heartbeat_age: float = 0.0) -> list[int]:
    """A store with ``n_done`` results and one failure, as the worker would leave it."""
    data = DataDir(config.data_dir).create()
    store = Store(config.db_path)
    ids = []
    for n in range(n_done + 1):
        item_id = store.enqueue(f"{n:064x}", f"1.2.3.{n}", f"film-{n}.dcm", 1000)
        if n == n_done:
            store.finish(item_id, "failed", error="cannot decode JPEG: image file is truncated",
                         result={"id": item_id, "status": "failed"})
        else:
            sides = [{"side": "right", "probability": 0.91, "fracture": True, "heatmap_peak": [10, 10]},
                     {"side": "left", "probability": 0.04, "fracture": False, "heatmap_peak": [50, 10]}]
            record = {"id": item_id, "status": "done", "sides": sides, "model": UNTRAINED, "warnings": [],
                      "metadata": {"sop_instance_uid": f"1.2.3.{n}"}, "timings_ms": {"total": 250.0}}
            store.finish(item_id, "done", result=record, patient={"patient_name": "DOE^JANE", "patient_id": "P1"},
                         total_ms=250.0, truth={"right": 1, "left": 0})
            for path in (data.overlay(item_id), data.image(item_id)):
                Image.new("RGB", (64, 48), (40, 40, 40)).save(path)
        ids.append(item_id)
    store.put_state("worker", {"state": "running", "accepting": True, "disk_free_mb": 9000, "model": UNTRAINED,
                               "backend": {"name": "onnxruntime", "device": "CPU"}})
    store.db.execute("UPDATE state SET at = ? WHERE key = 'worker'", (time.time() - heartbeat_age,))
    store.close()
    return ids


def token_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_refuses_to_listen_off_loopback_without_auth_and_tls(tmp_path, capsys):
    with pytest.raises(ConfigError, match="needs authentication"):
        create_app(make_config(tmp_path, kiosk_bind="0.0.0.0"))
    with pytest.raises(ConfigError, match="and TLS"):  # a password alone would cross the network in clear
        create_app(make_config(tmp_path, kiosk_bind="0.0.0.0", kiosk_password_hash=generate_password_hash(PASSWORD)))
    conf = tmp_path / "k.toml"
    conf.write_text(f'data_dir = "{tmp_path / "data"}"\nkiosk_bind = "0.0.0.0"\n')
    assert main(["--config", str(conf)]) == 2
    assert "refusing to listen on 0.0.0.0" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="kiosk_allow_unauthenticated_loopback"):  # loopback opens only when told
        create_app(make_config(tmp_path, kiosk_allow_unauthenticated_loopback=False))


def test_authentication_required_off_loopback(tmp_path):
    config = make_config(tmp_path, kiosk_bind="10.1.2.3", kiosk_password_hash=generate_password_hash(PASSWORD),
                         kiosk_tls_cert="cert.pem", kiosk_tls_key="key.pem", kiosk_allow_unauthenticated_loopback=False)
    populate(config)
    client = create_app(config).test_client()
    for url in ("/api/results", "/api/health", "/metrics", "/results/1/overlay.jpg", "/export/reader-study.csv"):
        response = client.get(url)
        assert response.status_code == 401, url
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    for url in ("/", "/study/1"):  # pages send a browser to the sign-in form
        response = client.get(url)
        assert response.status_code == 303 and "/login" in response.headers["Location"], url
    assert client.get("/", auth=("doctor", "wrong password")).status_code == 401
    assert client.get("/", auth=("mallory", PASSWORD)).status_code == 401
    assert client.get("/", auth=("doctor", PASSWORD)).status_code == 200
    assert client.get("/api/results", auth=("doctor", PASSWORD)).status_code == 200


def test_hash_password_command():
    proc = subprocess.run([sys.executable, "-m", "hipcad.appliance.kiosk", "--hash-password"], input=PASSWORD + "\n",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    from werkzeug.security import check_password_hash

    assert check_password_hash(proc.stdout.strip(), PASSWORD)


def test_csrf_token_required(tmp_path):
    config = make_config(tmp_path, read_first=True)
    populate(config)
    client = create_app(config).test_client()
    form = {"reader": "dr a", "phase": "before", "right": "1", "left": "0"}
    assert client.post("/study/1/answer", data=form).status_code == 400
    html = client.get("/study/1").get_data(as_text=True)
    assert client.post("/study/1/answer", data={**form, "csrf_token": "forged"}).status_code == 400
    other = create_app(config).test_client()  # another browser's token is no good here
    assert other.post("/study/1/answer", data={**form, "csrf_token": token_of(html)}).status_code == 400
    response = client.post("/study/1/answer", data={**form, "csrf_token": token_of(html)})
    assert response.status_code == 303


def test_security_headers(tmp_path):
    config = make_config(tmp_path)
    populate(config)
    client = create_app(config).test_client()
    for url in ("/", "/study/1", "/api/results", "/results/1/overlay.jpg"):
        response = client.get(url)
        assert "default-src 'self'" in response.headers["Content-Security-Policy"], url
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store", url
    assert "no-store" not in client.get("/static/kiosk.css").headers.get("Cache-Control", "")
    cookie = create_app(make_config(tmp_path, read_first=True)).test_client().get("/study/1").headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_pages_and_api(tmp_path):
    config = make_config(tmp_path)
    ids = populate(config, n_done=3)
    client = create_app(config).test_client()
    page = client.get("/").get_data(as_text=True)
    assert "PATIENT RIGHT HIP" in page and "FRACTURE SUSPECTED" in page and "no fracture detected" in page
    assert "COULD NOT READ THIS FILE" in page  # the newest is the failure
    assert "DOE JANE" in page and UNTRAINED_NOTICE.banner in page
    assert "operating point: default (threshold 0.5)" in page
    results = client.get("/api/results").get_json()["results"]
    assert [r["id"] for r in results] == sorted(ids, reverse=True)
    done = results[1]
    assert {"id", "status", "sides", "error", "overlay_url", "time", "model"} <= set(done)
    assert done["status"] == "done" and done["sides"][0] == {"side": "right", "probability": 0.91, "fracture": True,
                                                             "heatmap_peak": [10, 10]}
    assert done["overlay_url"] == f"/results/{done['id']}/overlay.jpg" and "patient" not in done
    assert results[0]["status"] == "failed" and results[0]["error"] and results[0]["overlay_url"] is None
    assert client.get(done["overlay_url"]).content_type == "image/jpeg"
    detail = client.get(f"/api/results/{done['id']}").get_json()
    assert detail["timings_ms"] == {"total": 250.0} and "DOE" not in str(detail)
    assert client.get("/api/results/999").status_code == 404
    assert client.get(f"/results/{results[0]['id']}/overlay.jpg").status_code == 404
    assert client.get("/api/results?limit=2").get_json()["results"][1]["id"] == ids[-2]
    study = client.get(f"/study/{done['id']}").get_data(as_text=True)
    assert "PATIENT LEFT HIP" in study and "took 0.25 s" in study


def test_the_number_is_called_a_probability_only_when_calibrated(tmp_path):
    config = make_config(tmp_path)
    populate(config, n_done=1)  # an uncalibrated record: a score
    store = Store(config.db_path)
    sides = [{"side": "right", "probability": 0.91, "fracture": True, "calibrated": True, "heatmap_peak": [10, 10]},
             {"side": "left", "probability": 0.04, "fracture": False, "calibrated": True, "heatmap_peak": [50, 10]}]
    item_id = store.enqueue("f" * 64, None, "calibrated.jpg", 10)
    store.finish(item_id, "done", result={"id": item_id, "status": "done", "sides": sides, "warnings": [],
                                          "model": {**UNTRAINED, "threshold": 0.21, "calibrated": True}})
    store.close()
    client = create_app(config).test_client()
    uncalibrated = client.get("/study/1").get_data(as_text=True)
    assert "score 0.91" in uncalibrated and "(alarm at 0.50)" in uncalibrated and "probability" not in uncalibrated
    calibrated = client.get(f"/study/{item_id}").get_data(as_text=True)
    assert "probability 91 %" in calibrated and "(alarm at 21 %)" in calibrated and "score 0.91" not in calibrated
    history = client.get("/").get_data(as_text=True)  # the newest large, the others in the history
    assert "probability 91 %" in history and "score 0.91" in history


def test_drift_page_needs_a_model_and_says_what_it_lacks(tmp_path):
    assert create_app(make_config(tmp_path)).test_client().get("/admin/drift").status_code == 404  # no bundle
    client = create_app(make_config(tmp_path / "demo", model="")).test_client()  # the demo bundle
    page = client.get("/admin/drift")
    assert page.status_code == 200 and "No shift detected." in page.get_data(as_text=True)
    summary = client.get("/api/drift").get_json()
    assert summary["flags"] == [] and summary["sides"]["right"]["halves"] == 0
    assert 'hipcad_drift_shift{window="14d",side="left"} 0' in client.get("/metrics").get_data(as_text=True)


def test_drift_uses_the_bundle_loaded_once_with_the_configured_trust(tmp_path, monkeypatch):
    """The bundle of /admin/drift and /metrics is the one create_app loaded, under the config's
    trust (trusted_keys, trust_demo_key, allow_unsigned_bundles), not the environment's."""
    import shutil

    from hipcad.runtime.model import bundle as bundle_module

    unsigned = tmp_path / "unsigned"
    shutil.copytree(bundle_module.DEFAULT_BUNDLE, unsigned)
    (unsigned / "manifest.sig").unlink()
    monkeypatch.delenv("HIPCAD_ALLOW_UNSIGNED_BUNDLES", raising=False)
    client = create_app(make_config(tmp_path / "a", model=str(unsigned), allow_unsigned_bundles=True)).test_client()
    monkeypatch.setattr(bundle_module, "load_bundle", lambda *a, **k: pytest.fail("loaded again per request"))
    for _ in range(2):
        assert client.get("/admin/drift").status_code == 200
        assert client.get("/api/drift").status_code == 200
        assert "hipcad_drift_shift{" in client.get("/metrics").get_data(as_text=True)
    monkeypatch.undo()
    refused = create_app(make_config(tmp_path / "b", model="", trust_demo_key=False)).test_client()
    assert refused.get("/admin/drift").status_code == 404  # the demo bundle, its key not trusted here
    assert "hipcad_drift_shift{" not in refused.get("/metrics").get_data(as_text=True)


def test_health_metrics_and_worker_down_banner(tmp_path):
    config = make_config(tmp_path)
    populate(config)
    client = create_app(config).test_client()
    response = client.get("/api/health")
    assert response.status_code == 200
    health = response.get_json()
    assert health["status"] == "ok" and health["worker"]["up"] and health["counts"]["done"] == 3
    text = client.get("/metrics").get_data(as_text=True)
    for needle in ('hipcad_results_total{status="done"} 3', 'hipcad_results_total{status="failed"} 1',
                   "hipcad_queue_length 0", "hipcad_worker_up 1", 'hipcad_inference_seconds_bucket{le="0.25"} 3',
                   "hipcad_inference_seconds_count 3", "hipcad_quarantined_total 0"):
        assert needle in text, needle
    populate(make_config(tmp_path / "stale"), heartbeat_age=120)
    stale = create_app(make_config(tmp_path / "stale")).test_client()
    assert stale.get("/api/health").status_code == 503
    assert "CAD WORKER NOT RUNNING" in stale.get("/").get_data(as_text=True)
    assert "hipcad_worker_up 0" in stale.get("/metrics").get_data(as_text=True)


def test_read_first_hides_cad_until_answered(tmp_path):
    config = make_config(tmp_path, read_first=True)
    populate(config)
    client = create_app(config).test_client()
    html = client.get("/study/1").get_data(as_text=True)
    assert "FRACTURE SUSPECTED" not in html and "no fracture detected" not in html and "/results/1/image.jpg" in html
    assert client.get("/results/1/overlay.jpg").status_code == 404
    hidden = client.get("/api/results/1").get_json()
    assert hidden["cad_hidden"] and hidden["sides"] == [] and hidden["overlay_url"] is None
    token = token_of(html)
    after_first = {"reader": "=HYPERLINK(1)", "phase": "after", "right": "0", "left": "0", "csrf_token": token}
    assert client.post("/study/1/answer", data=after_first).status_code == 409  # not before the first answer
    assert client.post("/study/1/answer", data={**after_first, "phase": "before", "right": "x"}).status_code == 400
    assert client.post("/study/1/answer", data={**after_first, "phase": "before", "right": "1"}).status_code == 303
    html = client.get("/study/1").get_data(as_text=True)
    assert "FRACTURE SUSPECTED" in html and 'data-phase="after"' in html
    assert client.get("/results/1/overlay.jpg").status_code == 200
    assert client.post("/study/1/answer", data=after_first).status_code == 303
    assert "Answers recorded" in client.get("/study/1").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(client.get("/export/reader-study.csv").get_data(as_text=True))))
    assert rows[0] == ["reader", "study_id", "file", "side", "truth", "before", "after", "before_at", "after_at"]
    # nobody signed in (an open loopback screen): the file name, which can hold patient data, is left out
    assert [r[:7] for r in rows[1:]] == [["'=HYPERLINK(1)", "1", "", "right", "1", "1", "0"],
                                         ["'=HYPERLINK(1)", "1", "", "left", "0", "0", "0"]]
    assert all(r[7] and r[8] for r in rows[1:])
    # another reader (another session) still sees study 1 hidden
    assert create_app(config).test_client().get("/api/results/1").get_json()["cad_hidden"]


def test_an_image_not_assessed_gets_a_card_not_verdicts(tmp_path):
    """An ineligible result: the kiosk says NOT ASSESSED and why, shows no hip verdict, and the API
    says eligible false with the reasons."""
    config = make_config(tmp_path)
    populate(config, n_done=1)
    data = DataDir(config.data_dir)
    store = Store(config.db_path)
    item_id = store.enqueue("f" * 64, "1.2.3.99", "ct.dcm", 1000)
    reasons = ["this is a CT scan (DICOM Modality 'CT'); the model reads only CR / DX radiographs"]
    record = {"id": item_id, "status": "done", "eligible": False, "sides": [], "model": UNTRAINED, "warnings": [],
              "eligibility": {"reasons": reasons, "warnings": [], "checks": {"modality": {"passed": False, "value": "CT"}}},
              "metadata": {"sop_instance_uid": "1.2.3.99", "midline_x": None, "midline_confidence": 0.0}}
    store.finish(item_id, "done", result=record, patient={"patient_name": "ROE^RICHARD"}, total_ms=40.0)
    for path in (data.overlay(item_id), data.image(item_id)):
        Image.new("RGB", (64, 48), (40, 40, 40)).save(path)
    store.close()
    client = create_app(config).test_client()
    page = client.get(f"/study/{item_id}").get_data(as_text=True)
    assert "NOT ASSESSED" in page and "this is a CT scan (DICOM Modality &#39;CT&#39;)" in page
    assert "FRACTURE SUSPECTED" not in page and "no fracture detected" not in page
    api = client.get(f"/api/results/{item_id}").get_json()
    assert api["eligible"] is False and api["not_assessed"] == reasons and api["sides"] == []
    history = client.get("/").get_data(as_text=True)
    assert "NOT ASSESSED" in history
