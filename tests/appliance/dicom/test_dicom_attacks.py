"""The attacks of the security review, repeated against a real worker's DICOM listener: each must
now fail, be logged without patient data, and leave the worker's memory and threads bounded.

The bound asserted here: the worker's resident memory, sampled every 20 ms during an attack, stays
within ``RSS_BOUND`` of what it was before (the review measured +1.3 to +2.1 GB for the same attacks).
Peers pose as different hosts from loopback addresses: 127.0.0.1 is the modality (allowed),
127.0.0.2 is allowed but misbehaves, 127.0.0.3 is not on the allow-list.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from io import BytesIO
from pathlib import Path

import pytest

from tests.appliance.dicom.test_dicom_node import DX, MODALITY, _associate_rq, _pdu, echo
from tests.appliance.support import WorkerProcess, dcmtk, free_port, need_binary, small_bundle, wait_for, write_config  # noqa: F401

RSS_BOUND = 64 << 20
MiB = 1 << 20


def rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


class Sampler:
    """The peak RSS and thread count of a process while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.peak_threads, self._stop = pid, 0, 0, threading.Event()

    def __enter__(self) -> "Sampler":
        self.before, self.threads_before = rss(self.pid), threads(self.pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            self.peak_threads = max(self.peak_threads, threads(self.pid))
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        print(f"RSS before {self.before / MiB:.0f} MiB, peak {self.peak / MiB:.0f} MiB "
              f"(+{(self.peak - self.before) / MiB:.1f}); threads {self.threads_before} -> peak {self.peak_threads}")

    @property
    def growth(self) -> int:
        return self.peak - self.before


@pytest.fixture(scope="module")
def box(tmp_path_factory, small_bundle):
    need_binary("echoscu", "dcmtk")
    root = tmp_path_factory.mktemp("attacks")
    port = free_port()
    config = write_config(root, small_bundle, dicom_port=port, dicom_ae_title="HIPCAD", dicom_allowed_aets=[MODALITY],
                          dicom_allowed_hosts=["127.0.0.1", "127.0.0.2"], dicom_handshake_s=3.0)
    worker = WorkerProcess(config).start()
    try:
        wait_for(lambda: echo(port).returncode == 0 or not worker.alive(), 60, interval=0.3, what="the listener")
        assert worker.alive(), worker.text()
        yield {"port": port, "worker": worker, "pid": worker.proc.pid, "incoming": root / "data" / "incoming"}
        assert worker.stop() == 0, worker.text()[-3000:]
    finally:
        if worker.alive():
            worker.proc.kill()
            worker.proc.wait()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def pump(sock: socket.socket, header: bytes, total: int) -> int:
    """Send ``header`` then zeros up to ``total`` bytes, until the listener hangs up; bytes sent."""
    sent = 0
    block = bytes(MiB)
    try:
        sock.sendall(header)
        while sent < total:
            sent += sock.send(block)
    except OSError:
        pass
    finally:
        sock.close()
    return sent


def associate(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A raw association proposing DX (explicit VR little endian, context 1), accepted."""
    def item(kind: int, body: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(body)) + body

    app = item(0x10, b"1.2.840.10008.3.1.1.1")
    pc = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, DX.encode()) + item(0x40, b"1.2.840.10008.1.2.1"))
    user = item(0x50, item(0x51, struct.pack(">I", 65536)) + item(0x52, b"1.2.3.4"))
    body = struct.pack(">HH", 1, 0) + b"HIPCAD".ljust(16) + MODALITY.encode().ljust(16) + bytes(32)
    sock = connect(port, source)
    sock.sendall(_pdu(0x01, body + app + pc + user))
    header = sock.recv(6)
    assert header[:1] == b"\x02", f"not accepted: {header!r}"
    length = struct.unpack(">I", header[2:])[0]
    while length:
        length -= len(sock.recv(length))
    return sock


def c_store_pdus(uid: str, declared: int, sent: int) -> list[bytes]:
    """P-DATA-TF PDUs of a C-STORE whose data set declares ``declared`` pixel bytes; the PDUs carry
    the command and about ``sent`` bytes of the data set, the last fragment left out."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = DX, uid, "DX"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    data = buffer.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", declared) + bytes(sent)
    req = C_STORE()
    req.MessageID, req.AffectedSOPClassUID, req.AffectedSOPInstanceUID, req.Priority = 1, DX, uid, 2
    req.DataSet = BytesIO(data)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    pdus = []
    for primitive in msg.encode_msg(1, 65536):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdus.append(pdu.encode())
    return pdus[:-1]


def big_dx(path: Path, rows: int, cols: int) -> Path:
    """A DX For Presentation file with rows*cols*2 bytes of pixels, written without holding them."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = DX, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "ATTACK^BIG", "ATK1", "DX"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.save_as(path, enforce_file_format=True)
    size = rows * cols * 2
    block = bytes(range(256)) * 4096
    with open(path, "ab") as fh:
        fh.write(b"\xe0\x7f\x10\x00OW\x00\x00" + size.to_bytes(4, "little"))
        for start in range(0, size, len(block)):
            fh.write(block[:min(len(block), size - start)])
    return path


def spooled(incoming: Path) -> list[str]:
    return [p.name for p in incoming.iterdir() if p.name.startswith(".tmp-scp")] if incoming.is_dir() else []


# -- oversized PDUs ------------------------------------------------------------------------------------------
def test_raw_oversized_pdus_are_cut_off_and_memory_stays_bounded(box):
    port, worker = box["port"], box["worker"]
    huge = struct.pack(">BBI", 0x01, 0, 0xFFFFFFF0)  # an A-ASSOCIATE-RQ declaring 4 GiB
    with Sampler(box["pid"]) as sample:
        allowed = pump(connect(port), huge, 800 * MiB)
        unknown = pump(connect(port, "127.0.0.3"), huge, 800 * MiB)
        sock = associate(port)  # a valid association, then a P-DATA-TF declaring 4 GiB
        pdata = pump(sock, struct.pack(">BBI", 0x04, 0, 0xFFFFFFF0), 800 * MiB)
    print(f"bytes sent before the listener hung up: {allowed / MiB:.1f} / {unknown / MiB:.1f} / {pdata / MiB:.1f} MiB")
    assert allowed < 16 * MiB and unknown < 16 * MiB and pdata < 16 * MiB  # socket buffers, not 800 MiB
    assert sample.growth < RSS_BOUND
    text = wait_for(lambda: "limit 262144" in worker.text() and worker.text(), 10, what="the P-DATA refusal in the log")
    assert "PDU type 0x01 declares 4294967280 bytes, limit 65536: association aborted" in text
    assert "from 127.0.0.3: host not on dicom_allowed_hosts: connection closed at accept" in text
    assert "PDU type 0x04 declares 4294967280 bytes, limit 262144" in text
    assert echo(port).returncode == 0 and worker.alive()


# -- a 500 MiB C-STORE ---------------------------------------------------------------------------------------
def test_500_mib_c_store_is_refused_out_of_resources_and_memory_stays_bounded(box, tmp_path):
    big = big_dx(tmp_path / "big500.dcm", 16384, 16000)  # 524,288,000 bytes of pixels
    assert big.stat().st_size > 500 * MiB
    with Sampler(box["pid"]) as sample:
        proc = dcmtk("storescu", "-v", "-aet", MODALITY, "-aec", "HIPCAD", "127.0.0.1", str(box["port"]), str(big),
                         timeout=300)
    text = (proc.stdout + proc.stderr).replace(".", "")  # storescu -v prints a dot per PDU sent
    big.unlink()
    assert "Received Store Response (Refused: OutOfResources)" in text, text[-2000:]
    assert sample.growth < RSS_BOUND
    assert spooled(box["incoming"]) == []  # nothing kept of it
    log = box["worker"].text()
    assert "C-STORE data set over 268435456 bytes" in log and "C-STORE refused: larger than 256 MiB" in log
    assert "ATTACK" not in log and "ATK1" not in log  # no patient data in the log
    assert echo(box["port"]).returncode == 0


# -- half-open connections (issue 18) --------------------------------------------------------------------------
def test_24_half_open_associations_do_not_stop_a_c_echo(box):
    port, worker, pid = box["port"], box["worker"], box["pid"]
    partial = _associate_rq()[:10]  # 10 bytes of an A-ASSOCIATE-RQ, then silence
    held = []
    with Sampler(pid) as sample:
        for source in ("127.0.0.2", "127.0.0.3"):
            for _ in range(24):
                try:
                    sock = connect(port, source)
                    sock.sendall(partial)
                    held.append(sock)
                except OSError:
                    pass  # refused at accept
        started = time.monotonic()
        proc = echo(port)
        took = time.monotonic() - started
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert took < 5, took
        assert sample.peak_threads - sample.threads_before <= 6  # at most the 2 half-open ones (+ the echo)
        text = wait_for(lambda: "not associated within 3 s" in worker.text() and worker.text(), 15,
                        what="the half-open connections reaped")
        assert "connections from this host not yet associated (limit 2)" in text
        assert "from 127.0.0.3: host not on dicom_allowed_hosts" in text
        assert "more like this not logged" in text or "more refusal(s)" in text or text.count("not yet associated") < 5
    finally:
        for sock in held:
            sock.close()


def test_peers_that_abort_mid_transfer_free_their_slots_and_spool_files(box):
    from pydicom.uid import generate_uid

    port, incoming = box["port"], box["incoming"]
    socks = []
    for _ in range(4):  # every association slot, each in the middle of a C-STORE
        sock = associate(port)
        for pdu in c_store_pdus(str(generate_uid()), 64 * MiB, 2 * MiB):
            sock.sendall(pdu)
        socks.append(sock)
    wait_for(lambda: len(spooled(incoming)) == 4, 10, what="four data sets being received")
    proc = echo(port)
    assert proc.returncode != 0 and "Local Limit Exceeded" in proc.stdout + proc.stderr  # all 4 slots are busy
    for sock in socks:  # the peers vanish: RST, no A-ABORT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    wait_for(lambda: echo(port).returncode == 0, 10, interval=0.3, what="a C-ECHO once the peers are gone")
    wait_for(lambda: spooled(incoming) == [], 10, what="the partial data sets deleted")


def test_called_ae_title_must_be_ours(box):
    proc = dcmtk("echoscu", "-aet", MODALITY, "-aec", "ANYTHING", "127.0.0.1", str(box["port"]), timeout=30)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Called AE Title Not Recognized" in text, text
    assert "called AE title is not ours" in box["worker"].text()
