"""Server access control, limits, user identity, idle timeout and clean shutdown."""

from __future__ import annotations

import asyncio

import pytest

from dimse.connect import connect
from dimse.errors import AssociationAborted, AssociationRejected
from dimse.server import Server
from pdu.items import UserIdentityRQ

pytestmark = pytest.mark.timeout(60)


async def test_wrong_called_ae_rejected_1_1_7() -> None:
    async with Server("SRV") as server:
        with pytest.raises(AssociationRejected) as info:
            await connect("127.0.0.1", server.port, called_ae="OTHER")
    assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 7)


async def test_called_ae_check_can_be_disabled() -> None:
    async with Server("SRV", require_called_ae=False) as server:
        async with connect("127.0.0.1", server.port, called_ae="ANYTHING") as assoc:
            assert await assoc.echo() == 0


async def test_unknown_calling_ae_rejected_1_1_3() -> None:
    async with Server("SRV", calling_allow={"FRIEND"}) as server:
        with pytest.raises(AssociationRejected) as info:
            await connect("127.0.0.1", server.port, called_ae="SRV", calling_ae="STRANGER")
        assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 3)
        async with connect("127.0.0.1", server.port, called_ae="SRV",
                           calling_ae="FRIEND") as assoc:
            assert await assoc.echo() == 0


async def test_peer_address_not_allowed_rejected_1_1_3() -> None:
    async with Server("SRV", peer_allow={"10.9.9.9"}) as server:
        with pytest.raises(AssociationRejected) as info:
            await connect("127.0.0.1", server.port, called_ae="SRV")
    assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 3)


async def test_too_many_associations_rejected_2_3_2() -> None:
    async with Server("SRV", max_associations=2) as server:
        first = await connect("127.0.0.1", server.port, called_ae="SRV")
        second = await connect("127.0.0.1", server.port, called_ae="SRV")
        with pytest.raises(AssociationRejected) as info:
            await connect("127.0.0.1", server.port, called_ae="SRV")
        assert (info.value.result, info.value.source, info.value.reason) == (2, 3, 2)
        await first.release()
        for _ in range(100):  # the server frees the slot when its task ends
            if len(server.associations) < 2:
                break
            await asyncio.sleep(0.01)
        third = await connect("127.0.0.1", server.port, called_ae="SRV")
        assert await third.echo() == 0
        await second.release()
        await third.release()


async def test_user_identity_authenticator() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def auth(identity: UserIdentityRQ, peer: tuple[str, int] | None
                   ) -> tuple[bool, bytes | None]:
        seen.append((identity.primary_field, identity.secondary_field))
        return identity.secondary_field == b"secret", b"welcome"

    async with Server("SRV", authenticator=auth, require_identity=True) as server:
        good = UserIdentityRQ(identity_type=2, positive_response_requested=True,
                              primary_field=b"alice", secondary_field=b"secret")
        async with connect("127.0.0.1", server.port, called_ae="SRV",
                           user_identity=good) as assoc:
            assert assoc.negotiated.user_identity_response == b"welcome"
            assert await assoc.echo() == 0
        bad = UserIdentityRQ(identity_type=2, positive_response_requested=False,
                             primary_field=b"alice", secondary_field=b"wrong")
        with pytest.raises(AssociationRejected) as info:
            await connect("127.0.0.1", server.port, called_ae="SRV", user_identity=bad)
        assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 1)
        with pytest.raises(AssociationRejected):
            await connect("127.0.0.1", server.port, called_ae="SRV")  # no identity at all
    assert seen == [(b"alice", b"secret"), (b"alice", b"wrong")]


async def test_idle_timeout_aborts_association() -> None:
    async with Server("SRV", idle_timeout=0.2) as server:
        assoc = await connect("127.0.0.1", server.port, called_ae="SRV")
        assert await assoc.echo() == 0
        await asyncio.wait_for(assoc.wait_closed(), 5)
        assert isinstance(assoc.error, AssociationAborted)


async def test_close_aborts_associations_and_leaves_no_task() -> None:
    server = await Server("SRV").start()
    clients = [await connect("127.0.0.1", server.port, called_ae="SRV") for _ in range(5)]
    assert len(server.associations) == 5
    await server.close()
    for client in clients:
        await asyncio.wait_for(client.wait_closed(), 5)
        assert isinstance(client.error, AssociationAborted)
    assert not server.associations
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftovers == []


async def test_garbage_instead_of_rq_does_not_hurt_server() -> None:
    async with Server("SRV", artim_timeout=1) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x09\x00\x00\x00\x00\x02zz")  # unknown PDU type
        data = await asyncio.wait_for(reader.read(100), 5)
        assert data[:1] == b"\x07"  # A-ABORT
        writer.close()
        async with connect("127.0.0.1", server.port, called_ae="SRV") as assoc:
            assert await assoc.echo() == 0
