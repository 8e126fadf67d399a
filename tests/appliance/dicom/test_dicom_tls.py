"""DICOM TLS with dcmtk as the real peer: echoscu/storescu +tls into the listener (client
certificates from the hospital CA only), and the worker's results out to storescp +tls."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from hipcad.appliance.config import load_config
from hipcad.appliance.storage.files import DataDir
from hipcad.appliance.storage.store import Store
from tests.appliance.dicom.test_dicom_node import MODALITY, _dx_file
from tests.appliance.pki import make_pki
from tests.appliance.support import (  # noqa: F401 - fixtures
    WorkerProcess,
    dcmtk,
    drop,
    free_port,
    need_binary,
    radiographs,
    small_bundle,
    wait_for,
    write_config,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_listener(tmp_path_factory, pki):
    from hipcad.appliance.dicom.scp import Listener

    need_binary("echoscu", "dcmtk")
    root = tmp_path_factory.mktemp("tls-listener")
    config = load_config(None, environ={}, hot_folder=root / "hot", data_dir=root / "data", dicom_port=free_port(),
                         dicom_allowed_aets=[MODALITY], dicom_allowed_hosts=["127.0.0.1"], dicom_tls=True,
                         dicom_tls_cert=str(pki["box"]), dicom_tls_key=str(pki["box_key"]), dicom_tls_ca=str(pki["ca"]))
    data = DataDir(config.data_dir).create()
    Store(config.db_path).close()
    listener = Listener(config, data)
    listener.start()
    yield listener
    listener.stop()


def tls_echo(port: int, key: Path | None, cert: Path | None, ca: Path, *extra: str) -> subprocess.CompletedProcess:
    identity = ["+tls", str(key), str(cert)] if key else ["+tla"]
    return dcmtk("echoscu", *identity, "+cf", str(ca), *extra, "-aet", MODALITY, "-aec", "HIPCAD", "127.0.0.1", str(port),
                 timeout=30)


def test_dcmtk_echo_and_store_over_tls(tls_listener, pki, tmp_path, caplog):
    port = tls_listener.port
    proc = tls_echo(port, pki["modality_key"], pki["modality"], pki["ca"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dx = _dx_file(tmp_path / "tls.dcm")
    proc = dcmtk("storescu", "-v", "+tls", str(pki["modality_key"]), str(pki["modality"]), "+cf", str(pki["ca"]),
                 "-aet", MODALITY, "-aec", "HIPCAD", "127.0.0.1", str(port), str(dx), timeout=60)
    assert proc.returncode == 0 and "Received Store Response (Success)" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert tls_listener.status()["received"] == 1


def test_clients_without_the_right_certificate_are_refused(tls_listener, pki):
    port = tls_listener.port
    before = tls_listener.status()["rejected_associations"]
    refused = {
        "anonymous TLS": tls_echo(port, None, None, pki["ca"]),
        "rogue CA": tls_echo(port, pki["rogue_client_key"], pki["rogue_client"], pki["ca"]),
        "plain TCP": dcmtk("echoscu", "-aet", MODALITY, "-aec", "HIPCAD", "127.0.0.1", str(port), timeout=30),
    }
    for what, proc in refused.items():
        assert proc.returncode != 0, what
        assert "Association Accepted" not in proc.stdout + proc.stderr, what
    status = wait_for(lambda: (s := tls_listener.status())["rejected_associations"] >= before + 3 and s, 10,
                      what="three refusals counted")
    assert status["last_rejected"]["reason"].startswith("TLS handshake failed")


def test_a_silent_peer_does_not_stop_tls_service(tls_listener, pki):
    """pynetdicom's own TLS server does the handshake in its accept loop: one peer that never sends a
    ClientHello stopped every TLS association. Here it waits in its own thread."""
    silent = socket.create_connection(("127.0.0.1", tls_listener.port), timeout=5)
    try:
        proc = tls_echo(tls_listener.port, pki["modality_key"], pki["modality"], pki["ca"])
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        silent.close()


# -- outbound: results to dcmtk's storescp over TLS ---------------------------------------------------------------
class StoreSCP:
    def __init__(self, root: Path, key: Path, cert: Path, ca: Path) -> None:
        self.port, self.out = free_port(), root / "received"
        self.out.mkdir(parents=True)
        self.log = root / "storescp.log"
        exe = need_binary("storescp", "dcmtk")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([exe, "-v", "+tls", str(key), str(cert), "+cf", str(ca), "-aet", "PACS",
                                          "-od", str(self.out), str(self.port)], stdout=log, stderr=subprocess.STDOUT)

    def files(self) -> list[Path]:
        return list(self.out.iterdir())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.mark.parametrize("pacs_cert", ["pacs", "rogue_pacs"])
def test_results_go_to_storescp_over_tls(tmp_path, small_bundle, radiographs, pki, pacs_cert):
    scp = StoreSCP(tmp_path / "pacs", pki[f"{pacs_cert}_key"], pki[pacs_cert], pki["ca"])
    try:
        config = write_config(tmp_path, small_bundle, pacs_destinations=[f"PACS@127.0.0.1:{scp.port}"], pacs_tls=True,
                              pacs_tls_ca=str(pki["ca"]), pacs_tls_cert=str(pki["box"]), pacs_tls_key=str(pki["box_key"]),
                              pacs_retry_initial_s=0.5, pacs_retry_max_s=1.0)
        dicom_input = next(p for p in radiographs if p.suffix == ".dcm")
        with WorkerProcess(config) as worker:
            drop(dicom_input, tmp_path / "hot")
            if pacs_cert == "pacs":
                wait_for(lambda: len(scp.files()) == 2 or not worker.alive(), 120, what="the SC and SR at storescp")
                assert len(scp.files()) == 2, worker.text()[-3000:]
            else:  # a PACS certificate from another CA: nothing is sent, the failure is reported
                wait_for(lambda: "TLS handshake failed" in worker.text() or not worker.alive(), 120,
                         what="the refused PACS in the log")
                assert scp.files() == []
            assert worker.stop() == 0
    finally:
        scp.stop()
