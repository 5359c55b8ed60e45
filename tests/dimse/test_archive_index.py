"""Embedded archive index: what index() reads (regular files only, Part 10 or not), entity keys
(patient by ID+issuer+name+birth date, series per study), duplicates, schema migration."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
)

from dimse.archive import Archive
from dimse.qr import Level, QueryModel

PR, SR = QueryModel.PATIENT_ROOT, QueryModel.STUDY_ROOT
ROOT = "1.2.826.0.1.3680043.10.777."


def instance(n: int, *, study: str = "1", series: str = "1", pid: str | None = "P1",
             name: str | None = "DOE^JOHN", birth: str | None = "19700101") -> Dataset:
    """A small CT data set (no pixels); UIDs built from ``ROOT``."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{ROOT}{study}.{series}.{n}"
    ds.StudyInstanceUID = ROOT + study
    ds.SeriesInstanceUID = f"{ROOT}{study}.{series}"
    ds.Modality = "CT"
    ds.InstanceNumber = n
    for kw, value in (("PatientID", pid), ("PatientName", name), ("PatientBirthDate", birth)):
        if value is not None:
            setattr(ds, kw, value)
    return ds


def write(path: Path, ds: Dataset, ts: str = ExplicitVRLittleEndian) -> Path:
    """A conformant Part 10 file."""
    ds = ds.copy()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def q(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for kw, value in keys.items():
        setattr(ds, kw, value)
    return ds


def found(arc: Archive, model: QueryModel, level: Level, ident: Dataset,
          *kws: str) -> list[tuple[str, ...]]:
    return sorted(tuple(str(getattr(r, k)) for k in kws) for r in arc.find(ident, model, level))


def index_in_thread(arc: Archive, timeout: float = 20.0) -> object:
    """arc.index() with a bounded wait (a blocking open would otherwise hang the test run)."""
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(arc.index()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "index() blocked"
    assert out, "index() raised"
    return out[0]


# -- 1, 2: only regular files of the folder are read -------------------------------------------

def test_dangling_symlink_and_loop_are_failed_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write(root / "ok.dcm", instance(1))
    os.symlink("/nonexistent/nothing.dcm", root / "dangling.dcm")
    os.symlink("loop.dcm", root / "loop.dcm")
    os.symlink("b.dcm", root / "a.dcm")
    os.symlink("a.dcm", root / "b.dcm")
    with Archive(root) as arc:
        stats = arc.index()
        assert stats.added == 1
        assert sorted(p.name for p in stats.failed) == ["a.dcm", "b.dcm", "dangling.dcm",
                                                        "loop.dcm"]
        assert arc.index().added == 0


def test_symlinks_never_followed_out_of_the_folder(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside" / "x.dcm", instance(9, study="9"))
    root = tmp_path / "store"
    inside = write(root / "in.dcm", instance(1))
    os.symlink(outside, root / "out.dcm")
    os.symlink(outside.parent, root / "outdir")
    os.symlink(inside, root / "alias.dcm")  # a second name of an indexed file: skipped
    with Archive(root) as arc:
        stats = arc.index()
        assert (stats.added, [p.name for p in stats.failed]) == (1, ["out.dcm"])
        assert found(arc, SR, Level.STUDY, q("STUDY", StudyInstanceUID=""),
                     "StudyInstanceUID") == [(ROOT + "1",)]
        (rec,) = arc.instances(q("IMAGE", SOPInstanceUID=""), SR, Level.IMAGE)
        assert rec.path == inside.resolve()
        with pytest.raises(ValueError, match="outside"):
            arc.add_file(root / "out.dcm")


def test_fifo_is_never_opened(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write(root / "ok.dcm", instance(1))
    os.mkfifo(root / "pipe.dcm")
    (root / "sub").mkdir()
    os.mkfifo(root / "sub" / "pipe2")
    with Archive(root) as arc:
        stats = index_in_thread(arc)
        assert stats.added == 1  # type: ignore[attr-defined]
        assert sorted(p.name for p in stats.failed) == ["pipe.dcm", "pipe2"]  # type: ignore
        with pytest.raises(ValueError, match="regular"):
            arc.add_file(root / "pipe.dcm")


def test_changed_file_that_turns_unreadable_is_dropped(tmp_path: Path) -> None:
    root = tmp_path / "store"
    f = write(root / "a.dcm", instance(1))
    with Archive(root) as arc:
        assert arc.index().added == 1
        f.write_bytes(b"no longer dicom")
        stats = arc.index()
        assert (stats.removed, stats.failed) == (1, (f.resolve(),))
        assert list(arc.instances(q("IMAGE", SOPInstanceUID=""), SR, Level.IMAGE)) == []
