"""The hot folder and intake (issue 18.4): a file still open for writing is never taken, moved-in
and closed files are taken at once, a writer that comes while a file is taken gets it back whole,
the SOP UID peek is bounded."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hipcad.appliance.storage.files import DataDir
from hipcad.appliance.storage.store import Store
from hipcad.appliance.worker import hotfolder as hotfolder_module
from hipcad.appliance.worker.hotfolder import HotFolder
from hipcad.appliance.worker.intake import admit, ingest, peek_sop_uid
from hipcad.appliance.worker.writers import (
    ProcScan,
    ScanResult,
    StillOpenError,
    Taking,
    lease_probe,
    proc_hides_processes,
)
from tests.appliance.support import wait_for
from tests.fuzz import cases
from tests.helpers import write_dicom


@pytest.fixture
def hot(tmp_path):
    folder = HotFolder(tmp_path / "hot", settle_s=0.3, quiet_s=3.0)
    folder.start()
    yield folder
    folder.stop()


def taken_within(hot: HotFolder, path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path in hot.ready():
            return True
        time.sleep(0.05)
    return False


def test_lease_probe_and_proc_scan_see_an_open_writer(tmp_path):
    path = tmp_path / "f.dcm"
    with open(path, "wb") as writer:
        writer.write(b"x" * 100)
        assert lease_probe(path) is False
        stat = os.stat(path)
        scan = ProcScan(tmp_path).scan()
        assert (stat.st_dev, stat.st_ino) in scan.writing
        with pytest.raises(StillOpenError):
            Taking(path)
    assert lease_probe(path) is True
    assert (stat.st_dev, stat.st_ino) not in ProcScan(tmp_path).scan().writing


def test_a_stalled_writer_is_never_taken_even_by_a_rescan(hot):
    """The field case: a writer paused with the file open; a rescan found it. It is taken after the
    close, whole."""
    path = hot.root / "slow.dcm"
    with open(path, "wb") as writer:
        writer.write(b"a" * 500_000)
        writer.flush()
        for _ in range(4):  # rescans during the pause, and longer than settle_s each time
            hot.rescan()
            assert not taken_within(hot, path, 0.6)
        writer.write(b"b" * 500_000)
    assert taken_within(hot, path, 5.0)
    assert path.stat().st_size == 1_000_000


def test_closed_and_moved_in_files_are_taken_at_once(hot, tmp_path):
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(b"m" * 1000)
    os.rename(outside, hot.root / "moved-in.dcm")  # from outside the watched folder: no rescan needed
    (hot.root / ".incoming.tmp").write_bytes(b"r" * 1000)
    os.rename(hot.root / ".incoming.tmp", hot.root / "renamed.dcm")  # a rename inside it
    (hot.root / "copied.dcm").write_bytes(b"c" * 1000)  # closed after writing
    start = time.monotonic()
    wanted = {hot.root / "moved-in.dcm", hot.root / "renamed.dcm", hot.root / "copied.dcm"}
    wait_for(lambda: wanted <= set(hot.ready()), 5.0, interval=0.02, what="the three files")
    assert time.monotonic() - start < hot.settle_s + 2.0  # no rescan, no settle wait needed (loaded machine)


def test_without_a_writer_check_only_the_quiet_period_vouches(tmp_path, monkeypatch):
    monkeypatch.setattr(hotfolder_module, "lease_probe", lambda path: None)  # e.g. not the owner, no CAP_LEASE
    hot = HotFolder(tmp_path / "hot", settle_s=0.3, quiet_s=3.0)  # no observer: the file is found by a rescan
    monkeypatch.setattr(hot, "_scan", lambda: None)  # /proc cannot see everyone either
    path = hot.root / "found.dcm"
    path.parent.mkdir()
    path.write_bytes(b"x" * 1000)
    hot.rescan()
    assert not taken_within(hot, path, 1.5)  # settle_s passed, quiet_s (3 s) not yet
    assert hot.writer_check == "none"
    assert taken_within(hot, path, 5.0)


def test_the_proc_scan_answers_where_the_lease_cannot(hot, monkeypatch):
    if not ProcScan(hot.root).scan().reliable:
        pytest.skip("other users' processes are hidden here: the /proc scan is not trusted (the quiet period is)")
    monkeypatch.setattr(hotfolder_module, "lease_probe", lambda path: None)
    path = hot.root / "held.dcm"
    with open(path, "wb") as writer:
        writer.write(b"x" * 1000)
        writer.flush()
        hot.rescan()
        assert not taken_within(hot, path, 1.0)
        assert hot.writer_check == "proc"
    assert taken_within(hot, path, 5.0)


MOUNTINFO = """\
21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
22 21 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw{options}
23 21 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw,size=8g
"""


@pytest.mark.parametrize("options, hidden", [
    ("", False), (",hidepid=0", False), (",hidepid=off", False), (",subset=pid", False),
    (",hidepid=1", True), (",hidepid=2", True), (",hidepid=invisible", True), (",hidepid=noaccess", True),
    (",hidepid=ptraceable", True), (",hidepid=4", True), (",gid=100,hidepid=invisible", True),
])
def test_a_proc_mounted_with_hidepid_hides_other_users(options, hidden):
    assert proc_hides_processes(MOUNTINFO.format(options=options)) is hidden


def test_the_top_proc_mount_counts_and_none_found_cannot_vouch():
    stacked = MOUNTINFO.format(options="") + "99 22 0:60 / /proc rw,relatime - proc proc rw,hidepid=invisible\n"
    assert proc_hides_processes(stacked)  # what systemd's ProtectProc= mounts over the host's /proc
    assert proc_hides_processes("21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n")
    assert proc_hides_processes("")


def test_a_scan_under_hidepid_is_not_trusted(tmp_path, monkeypatch):
    """ProtectProc=invisible (the shipped worker unit): other users' writers are absent from /proc,
    so a scan that found no writer cannot vouch; the file waits for quiet_s."""
    mountinfo = tmp_path / "mountinfo"
    monkeypatch.setattr(ProcScan, "mountinfo", str(mountinfo))
    mountinfo.write_text(MOUNTINFO.format(options=",hidepid=invisible"))
    scan = ProcScan(tmp_path).scan()
    assert scan.hidden and not scan.reliable
    mountinfo.write_text(MOUNTINFO.format(options=",hidepid=0"))
    assert not ProcScan(tmp_path).scan().hidden
    mountinfo.unlink()
    assert ProcScan(tmp_path).scan().hidden  # cannot tell: not trusted

    monkeypatch.setattr(hotfolder_module, "lease_probe", lambda path: None)  # not the owner, no CAP_LEASE
    mountinfo.write_text(MOUNTINFO.format(options=",hidepid=invisible"))
    hot = HotFolder(tmp_path / "hot", settle_s=0.3, quiet_s=3.0)  # no observer: the file is found by a rescan
    path = hot.root / "other-user.dcm"
    path.parent.mkdir()
    path.write_bytes(b"x" * 1000)
    hot.rescan()
    assert not taken_within(hot, path, 1.5)  # settle_s passed, quiet_s (3 s) not yet
    assert hot.writer_check == "none"
    assert taken_within(hot, path, 5.0)


def test_an_unreliable_scan_is_made_once_per_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(hotfolder_module, "lease_probe", lambda path: None)
    hot = HotFolder(tmp_path / "hot", settle_s=0.0, quiet_s=60.0)
    calls = []

    def scan():
        calls.append(1)
        return ScanResult(unreadable=1)
    monkeypatch.setattr(hot._proc, "scan", scan)
    hot.root.mkdir()
    for n in range(5):
        (hot.root / f"{n}.dcm").write_bytes(b"x")
    hot.rescan()
    assert hot.ready(now=time.monotonic() + 1.0) == []  # not vouched for: quiet_s not over
    assert len(calls) == 1 and hot.writer_check == "none"
    assert len(hot.ready(now=time.monotonic() + 61.0)) == 5
    assert len(calls) == 2


def test_a_writer_that_comes_while_the_file_is_taken_gets_it_back(tmp_path):
    data = DataDir(tmp_path / "data").create()
    store = Store(data.root / "db.sqlite3")
    path = tmp_path / "hot" / "late.dcm"
    path.parent.mkdir()
    path.write_bytes(b"first part")
    taking = Taking(path)
    assert taking.lease
    sha, size = taking.hash()
    writer = subprocess.Popen([sys.executable, "-c", f"open({str(path)!r}, 'ab').write(b' and the rest')"])
    wait_for(lambda: not taking.unchanged(), 10.0, what="the lease break")  # the writer waits in open()
    with pytest.raises(StillOpenError):
        admit(path, sha, size, None, "late.dcm", store, data, still_complete=taking.unchanged)
    taking.close()
    writer.wait(30)
    assert path.read_bytes() == b"first part and the rest"  # under its own name, whole
    assert not list(data.incoming.iterdir()) and store.find(sha) is None
    assert ingest(path, path.parent, store, data) is not None
    assert store.status_counts()["queued"] == 1


def test_peek_reads_the_sop_uid_and_no_more(tmp_path, caplog):
    plain = write_dicom(tmp_path / "plain.dcm", np.zeros((8, 8), np.uint8))
    import pydicom

    assert peek_sop_uid(plain) == pydicom.dcmread(plain).SOPInstanceUID
    deflated = cases.make_deflate_trailing(tmp_path / "deflated.dcm", rows=16, cols=16)
    assert peek_sop_uid(deflated) == pydicom.dcmread(deflated).SOPInstanceUID
    bomb = cases.make_deflate_bomb(tmp_path / "bomb.dcm", size_mb=1024)  # 1 GiB of zeros inflated
    start = time.monotonic()
    assert peek_sop_uid(bomb) is None
    assert time.monotonic() - start < 2.0  # the first peek inflated all of it: seconds and 2 GB
    hostile = write_dicom(tmp_path / "hostile.dcm", np.zeros((8, 8), np.uint8))
    raw = hostile.read_bytes().replace(pydicom.dcmread(hostile).SOPInstanceUID.encode(), b"../../etc/passwd", 1)
    hostile.write_bytes(raw)
    with caplog.at_level(logging.DEBUG):
        peek_sop_uid(hostile)
    assert "passwd" not in caplog.text  # pydicom's validation warning quotes the value
    for junk in (b"", b"\x89PNG\r\n\x1a\n" + b"x" * 200, b"\0" * 128 + b"DICM" + b"\xff" * 64):
        (tmp_path / "junk").write_bytes(junk)
        assert peek_sop_uid(tmp_path / "junk") is None


def test_a_symlink_is_dropped_and_never_followed(hot, tmp_path):
    target = tmp_path / "secret.txt"
    target.write_text("secret")
    os.symlink(target, hot.root / "link.dcm")
    hot.rescan()
    time.sleep(0.5)
    assert hot.ready() == [] and hot.pending() == 0
