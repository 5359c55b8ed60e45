"""Audit fixes of ``dimse qrscp``: stalled associations are dropped, mislabelled data sets refused.

* ``--idle-timeout`` / ``--max-associations`` (passed through :func:`archive_server`): a peer that
  sends 3 bytes of a PDU header and stalls is aborted while other clients are served;
* a data set whose encoding contradicts its presentation context's transfer syntax (an Implicit
  VR body on an Explicit VR context, or the reverse) is answered 0xC000 and nothing is stored.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage

from dimse.archive import Archive
from dimse.association import Association
from dimse.connect import connect
from dimse.errors import AssociationAborted, AssociationRejected
from dimse.qr_scp import archive_server
from dimse.server import Server
from tests.peers import _wait_listening, free_port, run_process

pytestmark = pytest.mark.timeout(60)

ROOT = "1.2.826.0.1.3680043.10.4646."
#: A wait long enough for a 1 s idle timeout on a loaded CI machine, but bounded.
BOUND = 20.0


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    arc = Archive(tmp_path / "archive")
    yield arc
    arc.close()


@pytest.fixture
async def idle_server(archive: Archive) -> AsyncIterator[Server]:
    async with archive_server(archive, "QRSCP", idle_timeout=1.0) as srv:
        yield srv


async def _stall_mid_header(port: int) -> Association:
    """An established association on which we then send 3 bytes of a PDU header and stop."""
    assoc = await connect("127.0.0.1", port, called_ae="QRSCP", calling_ae="STALLER",
                          sop_classes=[CTImageStorage])
    transport = assoc.protocol.transport
    assert transport is not None
    transport.write(b"\x04\x00\x00")
    return assoc


async def _echo(port: int) -> int:
    async with connect("127.0.0.1", port, called_ae="QRSCP", calling_ae="OTHER") as assoc:
        return await assoc.echo()


# --------------------------------------------------------------------------- idle timeout


async def test_stalled_association_aborted_while_others_served(idle_server: Server) -> None:
    stalled = await _stall_mid_header(idle_server.port)
    try:
        assert await asyncio.wait_for(_echo(idle_server.port), BOUND) == 0  # still served
        await asyncio.wait_for(stalled.wait_closed(), BOUND)  # the server dropped the staller
        assert isinstance(stalled.error, AssociationAborted), stalled.error
        assert await asyncio.wait_for(_echo(idle_server.port), BOUND) == 0
    finally:
        stalled.abort()


def test_archive_server_passes_the_limits(archive: Archive) -> None:
    server = archive_server(archive, "QRSCP", idle_timeout=7.0, max_associations=3)
    assert server.idle_timeout == 7.0
    assert server.max_associations == 3
    default = archive_server(archive, "QRSCP")
    assert default.max_associations is None


async def test_cli_idle_timeout_and_max_associations(tmp_path: Path) -> None:
    port = free_port()
    args = [sys.executable, "-m", "dimse", "qrscp", "--storage", str(tmp_path / "a"), "--aet",
            "QRSCP", "--port", str(port), "--idle-timeout", "1", "--max-associations", "1"]
    with run_process(args, timeout=120) as proc:
        await asyncio.to_thread(_wait_listening, proc, port, 20)
        stalled = await _stall_mid_header(port)
        try:
            with pytest.raises(AssociationRejected):  # the one slot is taken by the staller
                await asyncio.wait_for(_echo(port), BOUND)
            await asyncio.wait_for(stalled.wait_closed(), BOUND)
            assert isinstance(stalled.error, AssociationAborted), stalled.error
        finally:
            stalled.abort()
        assert await asyncio.wait_for(_echo(port), BOUND) == 0  # the slot is free again
        assert proc.poll() is None, proc.output()


@pytest.mark.parametrize("bad", ["-1", "x", "inf"])
def test_cli_rejects_bad_idle_timeout(bad: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from dimse.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["qrscp", "--storage", str(tmp_path), "--aet", "A", "--port", "0",
              "--idle-timeout", bad])
    assert exc.value.code == 2
    assert "--idle-timeout" in capsys.readouterr().err
