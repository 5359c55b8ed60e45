"""File Meta Information from cached parts, and the spare anonymous temp file of a FileSink."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pydicom
import pytest

from dimse import file_sink
from dimse.file_sink import FileSink, SpareFiles, file_meta_bytes
from dimse.messages import CStoreRQ

CT = "1.2.840.10008.5.1.4.1.1.2"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("instance", ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.2.1143.8.10000.17"])
@pytest.mark.parametrize("ae", ["", "STORESCU", "ODD"])
def test_file_meta_read_back_by_pydicom(instance: str, ae: str) -> None:
    """Whatever the cached parts, the group length and every value read back right."""
    for ts in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
        raw = file_meta_bytes(CT, instance, ts, ae)
        assert raw[:132] == b"\x00" * 128 + b"DICM"
        meta = pydicom.dcmread(io.BytesIO(raw)).file_meta
        assert meta.MediaStorageSOPClassUID == CT
        assert meta.MediaStorageSOPInstanceUID == instance
        assert meta.TransferSyntaxUID == ts
        assert meta.FileMetaInformationVersion == b"\x00\x01"
        assert meta.FileMetaInformationGroupLength == len(raw) - 132 - 12
        assert meta.get("SendingApplicationEntityTitle", "") == ae
        assert "SourceApplicationEntityTitle" not in meta  # no receiving title given
        assert len(raw) % 2 == 0


def _rq(uid: str) -> CStoreRQ:
    return CStoreRQ(message_id=1, affected_sop_class_uid=CT, affected_sop_instance_uid=uid)


def _patient_id(value: str) -> bytes:
    """A data set of one explicit VR LE element, Patient ID (even length)."""
    return b"\x10\x00\x20\x00LO" + len(value).to_bytes(2, "little") + value.encode()


def _store(folder: Path, spare: SpareFiles, uid: str, payload: bytes) -> FileSink:
    sink = FileSink(folder, _rq(uid), "1.2.840.10008.1.2.1", "", spare)
    sink.write(memoryview(payload))
    sink.finish()
    sink.commit()
    return sink


@pytest.mark.skipif(not file_sink._TMPFILE_FLAGS, reason="no O_TMPFILE here")
async def test_spare_file_is_used_refilled_after_the_response_and_leaves_nothing(
        tmp_path: Path) -> None:
    spare = SpareFiles(tmp_path)
    before = _open_fds()
    _store(tmp_path, spare, "1.2.1", b"first")  # no spare yet: the sink opens its own
    assert spare.take() == -1  # refill waits for the loop (after the response)
    await asyncio.sleep(0)
    fd = spare.take()
    assert fd >= 0 and os.fstat(fd).st_nlink == 0  # open, anonymous: no name in the folder
    spare._fd = fd  # give it back
    for i in range(2, 40):
        _store(tmp_path, spare, f"1.2.{i}", _patient_id(f"P{i:03d}"))
        await asyncio.sleep(0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"1.2.{i}.dcm" for i in range(1, 40))  # no temp file is ever visible
    back = pydicom.dcmread(tmp_path / "1.2.7.dcm")
    assert back.file_meta.MediaStorageSOPInstanceUID == "1.2.7"
    assert back.PatientID == "P007"
    assert _open_fds() == before + 1  # the committed files are closed; only the spare is open
    spare.close()
    assert _open_fds() == before
    assert len(list(tmp_path.iterdir())) == 39


@pytest.mark.skipif(not file_sink._TMPFILE_FLAGS, reason="no O_TMPFILE here")
def test_spare_without_a_loop_works_at_once(tmp_path: Path) -> None:
    spare = SpareFiles(tmp_path)
    before = _open_fds()
    _store(tmp_path, spare, "1.3.1", b"a")
    assert _open_fds() == before + 1  # committed file closed, spare opened, both at once
    sink = _store(tmp_path, spare, "1.3.2", b"b")
    assert sink.path.read_bytes().endswith(b"b")
    discarded = FileSink(tmp_path, _rq("1.3.3"), "1.2.840.10008.1.2.1", "", spare)
    discarded.write(memoryview(b"c"))
    discarded.finish()
    discarded.discard()  # took the spare and closed it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.3.1.dcm", "1.3.2.dcm"]
    spare.close()
    assert _open_fds() == before


def test_spare_in_a_folder_without_o_tmpfile_falls_back(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_sink, "_TMPFILE_FLAGS", 0)
    spare = SpareFiles(tmp_path)
    before = _open_fds()
    for i in range(3):
        _store(tmp_path, spare, f"1.4.{i}", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"1.4.{i}.dcm" for i in range(3)]
    assert _open_fds() == before
