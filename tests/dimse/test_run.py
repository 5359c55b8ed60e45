"""dimse.connect.run: asyncio.run, on uvloop when installed unless disabled."""

from __future__ import annotations

import asyncio

import pytest

from dimse.connect import UVLOOP_ENV, run, uvloop_available


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


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
