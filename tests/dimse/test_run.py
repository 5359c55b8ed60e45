"""dimse.connect.run: asyncio.run, on uvloop when installed unless disabled."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from dimse.connect import UVLOOP_ENV, run, uvloop_available


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    """run() freezes the collector's view of the process: undo it for the other tests."""
    yield
    gc.unfreeze()


def test_run_freezes_what_exists_at_startup() -> None:
    gc.unfreeze()
    run(_loop_module(), use_uvloop=False, freeze_gc=False)
    assert gc.get_freeze_count() == 0
    run(_loop_module(), use_uvloop=False)
    assert gc.get_freeze_count() > 1000  # modules, pydicom's dictionaries...


def test_default_loop_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UVLOOP_ENV, "0")
    assert run(_loop_module()).startswith("asyncio")
    assert run(_loop_module(), use_uvloop=False).startswith("asyncio")


@pytest.mark.skipif(not uvloop_available(), reason="uvloop not installed")
def test_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UVLOOP_ENV, raising=False)
    assert run(_loop_module()).startswith("uvloop")
    assert run(_loop_module(), use_uvloop=True).startswith("uvloop")


@pytest.mark.skipif(not uvloop_available(), reason="uvloop not installed")
def test_echo_on_uvloop() -> None:
    from dimse.connect import connect
    from dimse.server import Server

    async def main() -> int:
        async with Server("SRV") as server:
            async with connect("127.0.0.1", server.port, called_ae="SRV") as assoc:
                return await assoc.echo()

    assert run(main(), use_uvloop=True) == 0
