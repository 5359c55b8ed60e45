"""Regressions found by the long fuzz campaign (audit 6): each input is concrete bytes, minimised.

Each test failed on the code before its fix.
"""

from __future__ import annotations

import pytest

import pdu
from pdu.negotiation import negotiate
from pdu.negotiation_types import AcceptorPolicy

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"

#: An A-ASSOCIATE-RQ proposing Verification in one transfer syntax of 70 characters (the
#: decoder is lenient about UID length; PS3.8 Annex F allows 64).
LONG_TS_RQ = bytes.fromhex(
    "01 00 000000d0"  # A-ASSOCIATE-RQ, length 208
    "0001 0000"  # protocol version 1, reserved
    "4152434849564520202020202020202046555a5a202020202020202020202020"  # ARCHIVE, FUZZ
    + "00" * 32  # reserved
    + "10 00 0015 312e322e3834302e31303030382e332e312e312e31"  # application context
    "20 00 0063 01 000000"  # presentation context 1
    "30 00 0011 312e322e3834302e31303030382e312e31"  # abstract syntax: Verification
    "40 00 0046"  # transfer syntax, 70 characters:
    "312e322e3834302e31303030382e312e32312e322e3834302e31303030382e312e32"
    "312e322e3834302e31303030382e312e32312e322e3834302e31303030382e312e322e31"
    "50 00 0008 51 00 0004 00004000"  # user information: max length 16384
)


#: The same RQ with a 17-character transfer syntax holding control bytes: 1.2.<00 00 00 01>10008.1.2
CONTROL_TS_RQ = (b"\x01\x00" + (0xD0 - 53).to_bytes(4, "big") + LONG_TS_RQ[6:74]
                 + bytes.fromhex("10 00 0015 312e322e3834302e31303030382e332e312e312e31"
                                 "20 00 002e 01 000000"
                                 "30 00 0011 312e322e3834302e31303030382e312e31"
                                 "40 00 0011 312e322e0000000131303030382e312e32"
                                 "50 00 0008 51 00 0004 00004000"))


@pytest.mark.parametrize("rq_bytes", [LONG_TS_RQ, CONTROL_TS_RQ], ids=["70-chars", "control"])
def test_rejected_context_with_an_unencodable_transfer_syntax_still_gives_an_encodable_ac(
        rq_bytes: bytes) -> None:
    """The AC item of a rejected context echoed the first proposed transfer syntax even when
    it could not be encoded: the AC failed with PduEncodeError and the server logged an
    'association failed' traceback and aborted instead of answering."""
    rq = pdu.decode(rq_bytes)
    assert isinstance(rq, pdu.AAssociateRQ)
    ac, negotiated = negotiate(rq, AcceptorPolicy(contexts={VERIFICATION: (IMPLICIT_VR_LE,)}))
    assert negotiated.rejected == {1: 4}  # transfer syntaxes not supported
    back = pdu.decode(pdu.encode(ac))
    assert isinstance(back, pdu.AAssociateAC)
    (item,) = back.presentation_contexts
    assert (item.context_id, item.result, item.transfer_syntax) == (1, 4, IMPLICIT_VR_LE)
