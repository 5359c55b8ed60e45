"""Review 5b: defects found in the changes after 8dfb7f3 (archive worker threads, C-FIND
Specific Character Set), each reproduced before it was fixed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dimse.archive import Archive
from dimse.qr_scp import FindRequest
from tests.dimse.test_qr_find import _run_with, q

pytestmark = pytest.mark.timeout(30)


async def test_archive_run_after_close_fails_and_starts_no_thread(tmp_path: Path) -> None:
    """run() after close() made a new pool (threads nobody shuts down) and ran the work."""
    archive = Archive(tmp_path / "archive")
    assert await archive.run(archive.counts) == (0, 0)
    archive.close()
    ran = threading.Event()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        await archive.run(ran.set)
    assert not ran.is_set()


async def test_work_dropped_by_close_fails_instead_of_cancelling_the_caller(
        tmp_path: Path) -> None:
    """Work queued behind busy workers and dropped by close() raised CancelledError in a task
    nobody cancelled: a C-FIND performer then ended without its final response (the SCU
    waited for its DIMSE timeout). It now fails like work on the closed database."""
    archive = Archive(tmp_path / "archive")
    release = threading.Event()
    try:
        busy = [asyncio.ensure_future(archive.run(release.wait, 10)) for _ in range(40)]
        queued = asyncio.ensure_future(archive.run(archive.counts))
        await asyncio.sleep(0.05)  # every worker is taken; ``queued`` waits in the pool
        archive.close()
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            await asyncio.wait_for(queued, 5)
    finally:
        release.set()
    results = await asyncio.wait_for(asyncio.gather(*busy, return_exceptions=True), 5)
    assert any(r is True for r in results)  # the work under way finished
    assert not any(isinstance(r, asyncio.CancelledError) for r in results)


async def test_own_cancellation_of_archive_work_still_cancels(tmp_path: Path) -> None:
    """A caller that is cancelled itself still gets CancelledError (not the closed error)."""
    with Archive(tmp_path / "archive") as archive:
        release = threading.Event()
        task = asyncio.ensure_future(archive.run(release.wait, 10))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()


async def test_handler_match_not_in_request_charset_is_sent_in_utf8() -> None:
    """A handler's non-ASCII match with no (0008,0005) of its own took the request's character
    set even when that could not hold its values (ISO_IR 100 and a Japanese name): the whole
    C-FIND failed (C001, 'in none of the declared character sets')."""
    name = "\u5c71\u7530^\u592a\u90ce"

    async def handler(request: FindRequest) -> AsyncIterator[Dataset]:
        ds = Dataset()
        ds.StudyInstanceUID, ds.PatientName = "1.2.3", name
        yield ds

    ident = q("STUDY", StudyInstanceUID="", PatientName="")
    ident.SpecificCharacterSet = "ISO_IR 100"
    got = await _run_with(handler, ident)
    assert [(m.SpecificCharacterSet, str(m.PatientName)) for m in got] == [
        ("ISO_IR 192", name)]


async def test_handler_match_in_request_charset_keeps_it() -> None:
    """Values the request's character set holds are still sent in it."""
    async def handler(request: FindRequest) -> AsyncIterator[Dataset]:
        ds = Dataset()
        ds.StudyInstanceUID, ds.PatientName = "1.2.3", "M\u00fcller^Hans"
        yield ds

    ident = q("STUDY", StudyInstanceUID="", PatientName="")
    ident.SpecificCharacterSet = "ISO_IR 100"
    got = await _run_with(handler, ident)
    assert [(m.SpecificCharacterSet, str(m.PatientName)) for m in got] == [
        ("ISO_IR 100", "M\u00fcller^Hans")]
