"""Results to PACS: a Secondary Capture (heatmap overlay) and a Comprehensive SR (verdict and
probability per hip) in the source study, sent to a real Orthanc on loopback by store-and-forward;
with Orthanc down for a while (and the worker killed meanwhile), every result arrives exactly once."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from hipcad.appliance.config import load_config
from hipcad.appliance.storage.store import Store
from tests.appliance.support import (  # noqa: F401 - fixtures
    Orthanc,
    WorkerProcess,
    dcmtk,
    finished,
    free_port,
    kiosk_client,
    need_binary,
    small_bundle,
    wait_for,
    write_config,
)

MODALITY = "MODALITY"
SC = "1.2.840.10008.5.1.4.1.1.7"
SR = "1.2.840.10008.5.1.4.1.1.88.33"


def health(config_path: Path) -> dict:
    return kiosk_client(config_path).get("/api/health").get_json()


def destination(config_path: Path) -> dict:
    (dest,) = health(config_path)["dicom"]["destinations"]
    return dest


def sent_uids(config_path: Path) -> dict[str, tuple[str, str]]:
    """Our outbox: SOP Instance UID -> (kind, delivery status) for every result object."""
    store = Store(load_config(config_path, environ={}).db_path)
    try:
        rows = store.db.execute("SELECT o.sop_instance_uid, o.kind, d.status FROM outbox o "
                                "JOIN deliveries d ON d.outbox_id = o.id").fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}
    finally:
        store.close()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, small_bundle):
    """A real Orthanc and a worker that listens on DICOM and sends its results there."""
    need_binary("storescu", "dcmtk")
    root = tmp_path_factory.mktemp("pacs")
    port = free_port()
    orthanc = Orthanc(root / "orthanc", {"HIPCAD": port, "STORESCU": 104}).start()
    try:
        config = write_config(root, small_bundle, dicom_port=port, dicom_ae_title="HIPCAD", dicom_allowed_aets=[MODALITY],
                              dicom_allowed_hosts=["127.0.0.1"],
                              pacs_destinations=[f"{Orthanc.AE_TITLE}@127.0.0.1:{orthanc.dicom_port}"],
                              pacs_retry_initial_s=0.5, pacs_retry_max_s=2.0)
        worker = WorkerProcess(config).start()
        try:
            wait_for(lambda: health(config)["dicom"]["listener"]["up"] or not worker.alive(), 60, interval=0.3,
                     what="the listener")
            assert worker.alive(), worker.text()
            yield {"orthanc": orthanc, "config": config, "port": port, "worker": worker, "root": root}
            assert worker.stop() == 0, worker.text()[-3000:]
        finally:
            if worker.alive():
                worker.proc.kill()
                worker.proc.wait()
    finally:
        orthanc.stop()


def radiographs(folder: Path, count: int, seed: int) -> list[Path]:
    from hipcad.runtime.synth import generate

    return [r.path for r in generate(folder, count, seed=seed, size=(384, 320), formats="dcm-explicit", progress=False)]


def store_to_hipcad(pacs, files: list[Path]) -> None:
    proc = dcmtk("storescu", "-aet", MODALITY, "-aec", "HIPCAD", "127.0.0.1", str(pacs["port"]), *map(str, files))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def header(path: Path):
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)


def sr_probabilities(ds) -> dict[str, float]:
    """patient side -> the probability the SR reports, found by walking its content tree."""
    out = {}

    def walk(items, side=None):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            if name == "Tracking Identifier":
                side = str(item.TextValue).split()[1]
            if item.ValueType == "NUM" and name in ("Probability of fracture", "Fracture score (uncalibrated)"):
                out[side] = float(item.MeasuredValueSequence[0].NumericValue)
            if "ContentSequence" in item:
                side = walk(item.ContentSequence, side)
        return side

    walk(ds.ContentSequence)
    return out


def test_sc_and_sr_arrive_in_the_source_study(pacs):
    orthanc, config = pacs["orthanc"], pacs["config"]
    files = radiographs(pacs["root"] / "first", 3, seed=31)
    # the source goes to PACS too (as the modality would send it), and to hipcad
    proc = dcmtk("storescu", "-aet", "STORESCU", "-aec", Orthanc.AE_TITLE, "127.0.0.1", str(orthanc.dicom_port),
                 *map(str, files))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store_to_hipcad(pacs, files)
    wait_for(lambda: destination(config)["sent"] >= 6, 90, interval=0.3, what="6 results sent to Orthanc")
    results = {r["sop_instance_uid"]: r for r in kiosk_client(config).get("/api/results?limit=500").get_json()["results"]}
    import pydicom

    for path in files:
        source = header(path)
        instances = orthanc.study_instances(str(source.StudyInstanceUID))
        assert len(instances) == 3, [i["MainDicomTags"] for i in instances]  # source, SC, SR
        by_uid = {i["MainDicomTags"]["SOPInstanceUID"]: i for i in instances}
        assert str(source.SOPInstanceUID) in by_uid
        objects = [pydicom.dcmread(io.BytesIO(orthanc.instance_file(i["ID"]))) for i in instances
                   if i["MainDicomTags"]["SOPInstanceUID"] != str(source.SOPInstanceUID)]
        kinds = {str(ds.SOPClassUID): ds for ds in objects}
        assert set(kinds) == {SC, SR}
        for ds in objects:
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            assert ds.PatientID == source.PatientID and ds.PatientName == source.PatientName
            assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SOPInstanceUID != source.SOPInstanceUID
            assert "CAD" in ds.SeriesDescription and "UNTRAINED MODEL" in ds.SeriesDescription  # the small bundle is untrained
        sc, sr = kinds[SC], kinds[SR]
        assert sc.SeriesInstanceUID != sr.SeriesInstanceUID
        assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3 and sc.BurnedInAnnotation == "YES"
        assert sc.LossyImageCompression == "01" and sc.LossyImageCompressionMethod == "ISO_10918_1"  # a JPEG overlay
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert sc.pixel_array.shape[2] == 3
        result = results[str(source.SOPInstanceUID)]
        expected = {s["side"]: s["probability"] for s in result["sides"]}
        assert sr_probabilities(sr) == pytest.approx(expected, abs=1e-6)
        assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    dest = destination(config)
    assert dest["queue"] == 0 and dest["last_success_at"] and not dest["failing"]
    page = kiosk_client(config).get("/").get_data(as_text=True)
    assert f"PACS {Orthanc.AE_TITLE}@127.0.0.1:{orthanc.dicom_port}" in page and "0 waiting" in page


@pytest.mark.heavy
def test_orthanc_down_then_back_each_result_arrives_exactly_once(pacs):
    orthanc, config, worker = pacs["orthanc"], pacs["config"], pacs["worker"]
    files = radiographs(pacs["root"] / "second", 5, seed=32)
    before = finished(config)
    already = destination(config)["sent"]
    orthanc.stop()
    store_to_hipcad(pacs, files)
    wait_for(lambda: finished(config) >= before + 5, 90, what="5 results")
    dest = wait_for(lambda: (d := destination(config))["failing"] and d["queue"] == 10 and d, 30, interval=0.3,
                    what="the destination to be reported failing with 10 waiting")
    assert dest["last_error"] and dest["last_error_at"]
    assert "CAD RESULTS NOT REACHING PACS" in kiosk_client(config).get("/").get_data(as_text=True)
    # the worker dies meanwhile (power cut): the queue survives and resumes
    worker.kill()
    worker.start()
    wait_for(lambda: health(config)["worker"]["up"], 60, interval=0.3, what="the worker to come back")
    time.sleep(3.0)  # a few more failed tries against the dead destination
    assert destination(config)["queue"] == 10
    orthanc.start()
    wait_for(lambda: destination(config)["queue"] == 0, 60, interval=0.3, what="the queue to drain")
    dest = destination(config)
    assert dest["sent"] == already + 10 and not dest["failing"]
    ours = sent_uids(config)
    assert all(status == "sent" for _, status in ours.values())
    received = orthanc.received()
    for uid in ours:
        assert received.get(uid) == 1, f"result {uid} arrived {received.get(uid, 0)} times"
    for path in files:
        instances = orthanc.study_instances(str(header(path).StudyInstanceUID))
        assert sorted(i["MainDicomTags"]["SOPInstanceUID"] in ours for i in instances) == [True, True]
    assert worker.alive()


# -- the outbox without a real PACS (fast) ------------------------------------------------------------------
def _queued_results(tmp_path, destinations: list[str]):
    """A store with one finished item whose two results are built (small SC datasets) and queued."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from hipcad.appliance.dicom import results as dicom_results
    from hipcad.appliance.storage.files import DataDir
    from hipcad.runtime.durable import atomic_write

    data = DataDir(tmp_path / "data").create()
    store = Store(data.root / "db" / "hipcad.sqlite3")
    item_id = store.enqueue("ab" * 32, "1.2.3.4", "x.dcm", 10)
    plan = dicom_results.plan(destinations)
    for obj in plan:
        obj["sop_class_uid"] = SC  # both as small SC images: this tests the delivery, not the content
    store.finish(item_id, "done", result={"id": item_id}, outbox=plan)
    for row in store.outbox_unbuilt():
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = SC, row["sop_instance_uid"]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", row["series_instance_uid"]
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        atomic_write(data.outbox_file(row["id"]), buffer.getvalue())
        store.outbox_built(row["id"])
    return data, store, item_id, plan


def test_outbox_statuses_backoff_and_retention(tmp_path):
    """A PACS that answers Out of Resources once per instance, then Success: each is retried after
    its back-off and marked sent once; retention deletes the outbox files with the item."""
    from pynetdicom import AE, evt

    from hipcad.appliance.dicom.forward import Forwarder
    from hipcad.appliance.worker.intake import enforce_retention

    answers: dict[str, list[int]] = {}

    def on_store(event):
        uid = str(event.request.AffectedSOPInstanceUID)
        status = 0xA700 if uid not in answers else 0x0000
        answers.setdefault(uid, []).append(status)
        return status

    scp = AE(ae_title="FLAKY")
    scp.add_supported_context(SC, ["1.2.840.10008.1.2.1"])
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        dest = f"FLAKY@127.0.0.1:{port}"
        data, store, item_id, plan = _queued_results(tmp_path, [dest])
        config = load_config(None, environ={}, hot_folder=tmp_path / "hot", data_dir=data.root, pacs_destinations=[dest],
                             pacs_retry_initial_s=0.3, pacs_retry_max_s=1.0)
        forwarder = Forwarder(config, data)
        forwarder.send_due(store)
        assert all(v == [0xA700] for v in answers.values()) and len(answers) == 2
        assert store.delivery_counts()[dest] == {"pending": 2, "sent": 0, "failed": 0}
        forwarder.send_due(store)  # not due yet: nothing sent
        assert all(len(v) == 1 for v in answers.values())
        time.sleep(0.35)
        forwarder.send_due(store)
        assert all(v == [0xA700, 0x0000] for v in answers.values())
        assert store.delivery_counts()[dest] == {"pending": 0, "sent": 2, "failed": 0}
        forwarder.send_due(store)
        time.sleep(0.35)
        forwarder.send_due(store)
        assert all(len(v) == 2 for v in answers.values()), "a result was sent again after its success"
        assert set(answers) == {p["sop_instance_uid"] for p in plan}
        store.db.execute("UPDATE items SET received_at = 0 WHERE id = ?", (item_id,))
        assert enforce_retention(store, data, 1) == 1
        assert not list(data.outbox.iterdir()) and store.delivery_counts() == {}
        store.close()
    finally:
        server.shutdown()
