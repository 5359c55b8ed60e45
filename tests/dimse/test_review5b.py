"""Review 5b: defects found in the changes after 8dfb7f3 (archive worker threads, C-FIND
Specific Character Set), each reproduced before it was fixed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from dimse.archive import Archive

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
