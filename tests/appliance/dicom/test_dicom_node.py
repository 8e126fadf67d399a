"""The DICOM listener (storage SCP in the worker), driven by dcmtk's storescu / echoscu and by
pynetdicom: 20 radiographs in, every one read; C-ECHO; callers that are not configured rejected
with the right reason; the right failure statuses; junk on the port leaves it serving."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from hipcad.appliance.config import ConfigError, load_config
from hipcad.appliance.storage.files import DataDir
from hipcad.appliance.storage.store import Store
from tests.appliance.support import (  # noqa: F401 - fixtures
    WorkerProcess,
    dcmtk,
    demo_process,
    finished,
    free_port,
    kiosk_client,
    need_binary,
    small_bundle,
    store_counts,
    wait_for,
    write_config,
)

MODALITY = "MODALITY"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
SC = "1.2.840.10008.5.1.4.1.1.7"


def transfer_syntax(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


@pytest.fixture(scope="module")
def twenty(tmp_path_factory) -> list[Path]:
    """20 small synthetic radiographs: 10 uncompressed, 10 JPEG lossless SV1 made by dcmcjpeg +e1."""
    need_binary("dcmcjpeg", "dcmtk")
    from hipcad.runtime.synth import generate

    root = tmp_path_factory.mktemp("dicom-node")
    records = generate(root / "src", 20, seed=23, size=(384, 320), formats="dcm-explicit", progress=False)
    files = []
    for n, record in enumerate(records):
        if n % 2:
            out = root / f"jpegls-{n:02d}.dcm"
            proc = dcmtk("dcmcjpeg", "+e1", str(record.path), str(out))
            assert proc.returncode == 0, proc.stderr
            files.append(out)
        else:
            files.append(record.path)
    syntaxes = [transfer_syntax(p) for p in files]
    assert syntaxes.count("1.2.840.10008.1.2.4.70") == 10 and syntaxes.count("1.2.840.10008.1.2.1") == 10
    return files


@pytest.fixture(scope="module")
def node(tmp_path_factory, small_bundle):
    """One worker with its DICOM listener on a loopback port, for the tests of this module."""
    need_binary("storescu", "dcmtk")
    root = tmp_path_factory.mktemp("node")
    port = free_port()
    config = write_config(root, small_bundle, dicom_port=port, dicom_ae_title="HIPCAD",
                          dicom_allowed_aets=[MODALITY, "ECHO"], dicom_allowed_hosts=["127.0.0.1", "::1"])
    worker = WorkerProcess(config).start()
    try:
        wait_for(lambda: echo(port).returncode == 0 or not worker.alive(), 60, interval=0.3, what="the listener")
        assert worker.alive(), worker.text()
        yield {"config": config, "port": port, "worker": worker, "root": root}
        assert worker.stop() == 0, worker.text()[-3000:]
    finally:
        if worker.alive():
            worker.proc.kill()
            worker.proc.wait()


def echo(port: int, calling: str = MODALITY) -> subprocess.CompletedProcess:
    return dcmtk("echoscu", "-aet", calling, "-aec", "HIPCAD", "127.0.0.1", str(port), timeout=30)


# -- configuration ---------------------------------------------------------------------------------
def test_dicom_config_keys_and_refusals(tmp_path):
    config = load_config(None, environ={"HIPCAD_DICOM_PORT": "11112", "HIPCAD_DICOM_ALLOWED_AETS": "CR1, DR2",
                                        "HIPCAD_DICOM_ALLOWED_HOSTS": "10.1.2.0/24",
                                        "HIPCAD_PACS_DESTINATIONS": "PACS@10.0.0.5:104,ARCH@[fd00::5]:11112"})
    assert config.dicom_port == 11112 and config.dicom_allowed_aets == ["CR1", "DR2"]
    from hipcad.appliance.dicom.forward import backoff, destination_key

    assert [destination_key(d) for d in config.pacs_destinations] == ["PACS@10.0.0.5:104", "ARCH@[fd00::5]:11112"]
    assert [backoff(n, 10, 600) for n in (1, 2, 3, 7, 8, 20)] == [10, 20, 40, 600, 600, 600]
    with pytest.raises(ConfigError, match="would accept anyone"):
        load_config(None, environ={"HIPCAD_DICOM_PORT": "104"})
    with pytest.raises(ConfigError, match="would accept anyone"):  # an AE title list alone is not enough
        load_config(None, environ={"HIPCAD_DICOM_PORT": "104", "HIPCAD_DICOM_ALLOWED_AETS": "CR1"})
    with pytest.raises(ConfigError, match="dicom_tls needs"):
        load_config(None, environ={"HIPCAD_DICOM_TLS": "1", "HIPCAD_DICOM_TLS_CERT": "/x.pem"})
    with pytest.raises(ConfigError, match="pacs_tls needs"):
        load_config(None, environ={"HIPCAD_PACS_TLS": "1"})
    for bad in ({"HIPCAD_DICOM_AE_TITLE": "A\\B"}, {"HIPCAD_DICOM_AE_TITLE": "SEVENTEEN_CHARS_X"},
                {"HIPCAD_PACS_DESTINATIONS": "PACS:104"}, {"HIPCAD_PACS_DESTINATIONS": "P@h:70000"},
                {"HIPCAD_DICOM_ALLOWED_HOSTS": "modality.local"}, {"HIPCAD_DICOM_PORT": "-1"}):
        with pytest.raises(ConfigError):
            load_config(None, environ=bad)
    (tmp_path / "c.toml").write_text('dicom_allowed_aets = ["CR1", 3]\n')
    with pytest.raises(ConfigError, match="dicom_allowed_aets"):
        load_config(tmp_path / "c.toml", environ={})


# -- the worker's listener with dcmtk --------------------------------------------------------------------
def test_storescu_twenty_radiographs_each_read(node, twenty):
    config, port = node["config"], node["port"]
    before = finished(config)
    proc = dcmtk("storescu", "-xs", "-aet", MODALITY, "-aec", "HIPCAD", "127.0.0.1", str(port), *map(str, twenty))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_for(lambda: finished(config) >= before + 20, 120, what="20 results")
    import pydicom

    sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in twenty}
    results = kiosk_client(config).get("/api/results?limit=500").get_json()["results"]
    by_uid = {r["sop_instance_uid"]: r for r in results}
    assert sent <= set(by_uid), "a radiograph sent by C-STORE has no result"
    for uid in sent:
        item = by_uid[uid]
        assert item["status"] == "done", item
        assert [s["side"] for s in item["sides"]] == ["right", "left"]
        assert item["file"] == f"C-STORE from {MODALITY}"
    # received again (the modality re-sends): Success, nothing read twice
    proc = dcmtk("storescu", "-xs", "-aet", MODALITY, "-aec", "HIPCAD", "127.0.0.1", str(port), *map(str, twenty[:3]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    time.sleep(1.0)
    assert store_counts(config)["done"] == before + 20
    data = DataDir(load_config(config, environ={}).data_dir)
    assert not [p for p in data.incoming.iterdir()], "something left in the spool"
    health = wait_for(lambda: (h := kiosk_client(config).get("/api/health").get_json())["dicom"]["listener"]
                      ["duplicates"] >= 3 and h, 10, what="the heartbeat to report the re-sent instances")
    listener = health["dicom"]["listener"]
    assert listener["enabled"] and listener["up"] and listener["port"] == port and listener["ae_title"] == "HIPCAD"
    assert listener["received"] >= 20 and listener["duplicates"] >= 3 and listener["last_received_at"]
    page = kiosk_client(config).get("/").get_data(as_text=True)
    assert "DICOM listener HIPCAD port" in page and "DICOM LISTENER DOWN" not in page


def test_echoscu_and_unknown_caller_rejected(node):
    port = node["port"]
    proc = echo(port)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = echo(port, calling="INTRUDER")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "Association Rejected" in text and "Rejected Permanent" in text, text
    assert "Calling AE Title Not Recognized" in text, text
    health = wait_for(lambda: (h := kiosk_client(node["config"]).get("/api/health").get_json())["dicom"]["listener"]
                      ["rejected_associations"] >= 1 and h, 10, what="the rejection in /api/health")
    assert health["dicom"]["listener"]["last_rejected"]["calling_ae"] == "INTRUDER"


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _associate_rq(calling: str = MODALITY, called: str = "HIPCAD") -> bytes:
    """A minimal valid A-ASSOCIATE-RQ proposing Verification (PS3.8 9.3.2)."""
    def item(kind: int, body: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(body)) + body

    app = item(0x10, b"1.2.840.10008.3.1.1.1")
    pc = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"))
    user = item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4"))
    body = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
    return _pdu(0x01, body + app + pc + user)


def test_junk_and_malformed_associations_leave_the_listener_serving(node, twenty):
    port, worker = node["port"], node["worker"]
    rng = __import__("random").Random(5)

    def send(payload: bytes, linger: float = 0.2) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            try:
                sock.sendall(payload)
                time.sleep(linger)
            except OSError:
                pass  # the listener may hang up first: that is fine

    idle = socket.create_connection(("127.0.0.1", port), timeout=5)  # connects and says nothing
    try:
        for _ in range(5):
            send(os.urandom(rng.randint(1, 70000)))
        send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        send(_pdu(0x01, b""))  # an empty A-ASSOCIATE-RQ
        send(struct.pack(">BBI", 0x01, 0, 0xFFFFFFF0) + b"\x00" * 64)  # declares 4 GB, sends 64 bytes
        rq = _associate_rq()
        send(rq[: len(rq) // 2])  # cut off in the middle
        send(rq[:10] + os.urandom(len(rq) - 10))  # right header, junk items
        send(_pdu(0x04, os.urandom(200)))  # P-DATA before any association
        send(rq + _pdu(0x04, struct.pack(">I", 0xFFFF) + b"\x01\x03" + os.urandom(100)), linger=0.5)  # junk P-DATA
        send(rq + _pdu(0x07, bytes(4)))  # associate, then abort at once
        send(rq + _pdu(0x09, os.urandom(10)))  # an unknown PDU type after the association
        # an association that sends half a C-STORE and vanishes (pynetdicom as the peer)
        from pynetdicom import AE

        ae = AE(ae_title=MODALITY)
        ae.add_requested_context(DX, ["1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", port, ae_title="HIPCAD")
        assert assoc.is_established
        assoc.abort()
        assert worker.alive(), worker.text()[-3000:]
        proc = echo(port)
        assert proc.returncode == 0, proc.stdout + proc.stderr  # served while a silent peer holds a connection
    finally:
        idle.close()
    proc = dcmtk("storescu", "-aet", MODALITY, "-aec", "HIPCAD", "127.0.0.1", str(port), str(twenty[0]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert worker.alive()
    assert "Traceback" not in worker.text()


# -- failure statuses (the Listener in this process, no model needed) -------------------------------------------
@pytest.fixture
def listener(tmp_path):
    from hipcad.appliance.dicom.scp import Listener

    def make(accepting=lambda: True, **keys):
        values = {"dicom_port": free_port(), "dicom_allowed_aets": [MODALITY], "dicom_allowed_hosts": ["127.0.0.1"], **keys}
        config = load_config(None, environ={}, hot_folder=tmp_path / "hot", data_dir=tmp_path / "data", **values)
        data = DataDir(config.data_dir).create()
        Store(config.db_path).close()
        made = Listener(config, data, accepting=accepting)
        made.start()
        made.data_dir = data
        listeners.append(made)
        return made

    listeners = []
    yield make
    for made in listeners:
        made.stop()


def _dx_file(path: Path, *, pixels: bool = True, body: bytes | None = None, as_mammo: bool = False,
             sop_class: str = DX, **tags) -> Path:
    """A small DX dataset; ``body`` replaces the encoded dataset after a valid file meta; ``as_mammo``
    makes the dataset say Digital Mammography while its file meta (and so the context) says DX."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "DX", "TEST^STATUS", "S1"
    if pixels:
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 64, 64, 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = np.arange(64 * 64, dtype=np.uint8).tobytes()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    header = 128 + 4 + 12 + struct.unpack("<I", raw[140:144])[0]  # preamble, DICM, group length, file meta
    if body is not None:
        path.write_bytes(raw[:header] + body)
    if as_mammo:  # Digital Mammography For Presentation: as long as the DX UID
        path.write_bytes(raw[:header] + raw[header:].replace(DX.encode(), b"1.2.840.10008.5.1.4.1.1.1.2", 1))
    return path


def _c_store(port: int, path: Path, calling: str = MODALITY) -> int:
    """C-STORE one file's bytes as they are on disk (pynetdicom's chunked sending reads only the file meta)."""
    from pynetdicom import AE, _config

    ae = AE(ae_title=calling)
    ae.add_requested_context(DX, ["1.2.840.10008.1.2.1"])
    ae.add_requested_context(SC, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title="HIPCAD")
    assert assoc.is_established
    saved, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
        assoc.release()


def test_failure_statuses_and_nothing_half_written(listener, tmp_path, monkeypatch):
    scp = listener()
    ok = _dx_file(tmp_path / "ok.dcm")
    assert _c_store(scp.port, ok) == 0x0000
    assert _c_store(scp.port, ok) == 0x0000  # the same instance again: Success, queued once
    store = Store(scp.config.db_path)
    assert store.status_counts()["queued"] == 1
    spooled = {p.name for p in scp.data_dir.incoming.iterdir()}
    assert len(spooled) == 1 and all(len(name) == 64 for name in spooled)  # named by sha256, nothing else

    assert _c_store(scp.port, _dx_file(tmp_path / "nopix.dcm", pixels=False)) == 0xA900
    assert _c_store(scp.port, _dx_file(tmp_path / "mg.dcm", as_mammo=True)) == 0xA900
    assert _c_store(scp.port, _dx_file(tmp_path / "junk.dcm", body=b"\x10\x00\x10\x00PN\xff\xff" + os.urandom(300))) == 0xC000

    import hipcad.appliance.dicom.guard as guard_module

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(guard_module.os, "fsync", no_space)
    assert _c_store(scp.port, _dx_file(tmp_path / "full.dcm")) == 0xA700
    monkeypatch.undo()
    assert {p.name for p in scp.data_dir.incoming.iterdir()} == spooled  # no temporary left behind
    assert store.status_counts()["queued"] == 1
    store.close()
    assert scp.status()["refused"] == 4 and scp.alive()

    # our own result routed back to us by a PACS: Success, but never read (no loop)
    assert _c_store(scp.port, _dx_file(tmp_path / "own.dcm", sop_class=SC, Manufacturer="hipcad")) == 0x0000
    assert scp.status()["ignored_own_results"] == 1
    assert {p.name for p in scp.data_dir.incoming.iterdir()} == spooled

    full = listener(accepting=lambda: False)  # the disk guard is tripped
    assert _c_store(full.port, _dx_file(tmp_path / "guard.dcm")) == 0xA700


def test_host_not_allowed_is_closed_at_accept(listener):
    scp = listener(dicom_allowed_aets=[], dicom_allowed_hosts=["10.99.0.0/16"])
    proc = echo(scp.port)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Association Accepted" not in text, text
    assert scp.status()["last_rejected"]["reason"].startswith("host not on dicom_allowed_hosts")
    allowed = listener(dicom_allowed_aets=[], dicom_allowed_hosts=["127.0.0.0/8"])
    assert echo(allowed.port).returncode == 0


# -- hipcad demo ------------------------------------------------------------------------------------
def test_demo_prints_its_dicom_listener(tmp_path, small_bundle):
    import signal

    with demo_process(tmp_path, small_bundle, 1) as proc:
        lines = [proc.stdout.readline().strip() for _ in range(3)]
        assert lines[2].startswith("dicom: AE title HIPCAD on 127.0.0.1 port "), lines
        port = int(lines[2].split(" port ", 1)[1].split()[0])
        assert echo(port, calling="ANY").returncode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_port_taken_worker_keeps_reading_and_says_listener_down(tmp_path, small_bundle):
    """Another program holds the port: the hot folder keeps working and the kiosk says the listener is down."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        config = write_config(tmp_path, small_bundle, dicom_port=port, dicom_allowed_hosts=["127.0.0.1"])
        with WorkerProcess(config) as worker:
            h = wait_for(lambda: (h := kiosk_client(config).get("/api/health").get_json())["worker"]["up"] and h, 60,
                         interval=0.3, what="the worker")
            listener = h["dicom"]["listener"]
            assert listener["enabled"] and not listener["up"] and "cannot listen" in listener["error"]
            assert "DICOM LISTENER DOWN" in kiosk_client(config).get("/").get_data(as_text=True)
            assert worker.alive()
            assert worker.stop() == 0
    finally:
        blocker.close()
