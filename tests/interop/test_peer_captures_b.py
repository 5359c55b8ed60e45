"""Regression tests from bytes captured on the wire with GDCM and CTN (audit 5, peers B).

Provenance: GDCM 3.0.21 (Debian package libgdcm-tools, tool ``gdcmscu``; implementation class UID
1.2.826.0.1.3680043.2.1143.107.104.103.115.3.0.21, version name "GDCM 3.0.21") and the Central Test
Node, CTN 3.2.0~dfsg-7 (Debian package ctn; tools dicom_echo, send_image, simple_storage;
implementation class UID 1.2.840.113654.2.3.1995.3.0.6, version name MIRCTN11MAR2003), against
``python3 -m dimse qrscp`` and against our SCU, all on 127.0.0.1, recorded by tests/recorder.py's
RecordingProxy. Each constant says which command produced it. The tests need neither peer: they
decode and re-encode the PDUs byte-exact, read the DIMSE commands, and replay the peers' requests
over a raw socket against an in-process :class:`dimse.Server`. They guard behaviour that is right
today (see /work/notes/audit5/peers_b.md for what is not).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset

import pdu
from dimse import commands
from dimse.messages import CEchoRSP, CFindRSP, CStoreRQ, CStoreRSP
from dimse.qr_scp import FindRequest, archive_server
from dimse.server import Server
from dimse.services import ReceivedDataSet
from pdu.negotiation import negotiated_from_ac
from tests.raw_peer import (
    RELEASE_RQ,
    RawPeer,
    archive_with_ct_small,
    find_server,
    results,
    split_pdus,
    store_server,
)

pytestmark = pytest.mark.timeout(60)

_HEADER = struct.Struct(">BxL")
VERIFICATION = "1.2.840.10008.1.1"
GDCM_CLASS_UID = "1.2.826.0.1.3680043.2.1143.107.104.103.115.3.0.21"
CTN_CLASS_UID = "1.2.840.113654.2.3.1995.3.0.6"
CT_SMALL_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
CT_SMALL_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"

# gdcmscu --echo --call ARCHIVE --aetitle GDCMSCU 127.0.0.1 PORT: A-ASSOCIATE-RQ
GDCM_ECHO_RQ = bytes.fromhex(
    "0100000000df00010000415243484956452020202020202020204744434d534355202020202020202020000000000000"
    "000000000000000000000000000000000000000000000000000010000015312e322e3834302e31303030382e332e312e"
    "312e312000002e0100000030000011312e322e3834302e31303030382e312e3140000011312e322e3834302e31303030"
    "382e312e325000004c510000040000400052000031312e322e3832362e302e312e333638303034332e322e313134332e"
    "3130372e3130342e3130332e3131352e332e302e32315500000b4744434d20332e302e3231"
)

# gdcmscu --echo: C-ECHO-RQ (context 1, message ID 1), one P-DATA-TF
GDCM_ECHO_PDATA = bytes.fromhex(
    "04000000004a0000004601030000000004000000380000000000020012000000312e322e3834302e31303030382e312e"
    "3100000000010200000030000000100102000000010000000008020000000101"
)

# our SCP's A-ASSOCIATE-AC to GDCM_ECHO_RQ (implementation class UID/version of this library)
OURS_ECHO_AC_TO_GDCM = bytes.fromhex(
    "0200000000c400010000415243484956452020202020202020204744434d534355202020202020202020000000000000"
    "000000000000000000000000000000000000000000000000000010000015312e322e3834302e31303030382e332e312e"
    "312e31210000190100000040000011312e322e3834302e31303030382e312e325000004651000004000100005200002a"
    "322e32352e313034363431363733393436323431363934353939393331303838363132363435343832395500000c4449"
    "4d53455f50595f303130"
)

# gdcmscu --find --patientroot --patient --key 10,10= --key 10,20=: A-ASSOCIATE-RQ
GDCM_PATIENT_FIND_RQ = bytes.fromhex(
    "0100000000e900010000415243484956452020202020202020204744434d534355202020202020202020000000000000"
    "000000000000000000000000000000000000000000000000000010000015312e322e3834302e31303030382e332e312e"
    "312e3120000038010000003000001b312e322e3834302e31303030382e352e312e342e312e322e312e3140000011312e"
    "322e3834302e31303030382e312e325000004c510000040000400052000031312e322e3832362e302e312e3336383030"
    "34332e322e313134332e3130372e3130342e3130332e3131352e332e302e32315500000b4744434d20332e302e3231"
)

# ... its C-FIND-RQ: command PDU, then identifier PDU (SpecificCharacterSet ISO_IR 192,
# QueryRetrieveLevel PATIENT, PatientName and PatientID empty)
GDCM_PATIENT_FIND_PDATA = bytes.fromhex(
    "04000000005e0000005a010300000000040000004c000000000002001c000000312e322e3834302e31303030382e352e"
    "312e342e312e322e312e3100000000010200000020000000100102000000010000000007020000000200000000080200"
    "00000100040000000038000000340102080005000a00000049534f5f495220313932080052000800000050415449454e"
    "542010001000000000001000200000000000"
)

# our SCP's first Pending C-FIND-RSP to it: ONE P-DATA-TF holding two PDVs (command, identifier)
OURS_PENDING_FIND_RSP_TO_GDCM = bytes.fromhex(
    "0400000000a60000005a010300000000040000004c000000000002001c000000312e322e3834302e31303030382e352e"
    "312e342e312e322e312e3100000000010200000020800000200102000000010000000008020000000100000000090200"
    "000000ff0000004401020800050000000000080052000800000050415449454e54201000100016000000436f6d707265"
    "7373656453616d706c65735e43543120100020000400000031435431"
)

# gdcmscu --find --studyroot --series --key 20,d=<CT_small study> --key 20,e= --key 8,60=: A-ASSOCIATE-RQ
GDCM_SERIES_FIND_RQ = bytes.fromhex(
    "0100000000e900010000415243484956452020202020202020204744434d534355202020202020202020000000000000"
    "000000000000000000000000000000000000000000000000000010000015312e322e3834302e31303030382e332e312e"
    "312e3120000038010000003000001b312e322e3834302e31303030382e352e312e342e312e322e322e3140000011312e"
    "322e3834302e31303030382e312e325000004c510000040000400052000031312e322e3832362e302e312e3336383030"
    "34332e322e313134332e3130372e3130342e3130332e3131352e332e302e32315500000b4744434d20332e302e3231"
)

# ... its C-FIND-RQ: command PDU, identifier PDU
GDCM_SERIES_FIND_PDATA = bytes.fromhex(
    "04000000005e0000005a010300000000040000004c000000000002001c000000312e322e3834302e31303030382e352e"
    "312e342e312e322e322e3100000000010200000020000000100102000000010000000007020000000200000000080200"
    "0000010004000000006a000000660102080005000a00000049534f5f4952203139320800520006000000534552494553"
    "080060000000000020000d002c000000312e332e362e312e342e312e353936322e312e322e312e323030343031313930"
    "37323733302e31323332322020000e0000000000"
)

# gdcmscu --move --patientroot --patient --key 10,20=1CT1 --port-scp 0 -o DIR: A-ASSOCIATE-RQ
# (context 1 Patient Root FIND, context 3 Patient Root MOVE)
GDCM_MOVE_RQ = bytes.fromhex(
    "01000000012500010000415243484956452020202020202020204744434d534355202020202020202020000000000000"
    "000000000000000000000000000000000000000000000000000010000015312e322e3834302e31303030382e332e312e"
    "312e3120000038010000003000001b312e322e3834302e31303030382e352e312e342e312e322e312e3140000011312e"
    "322e3834302e31303030382e312e3220000038030000003000001b312e322e3834302e31303030382e352e312e342e31"
    "2e322e312e3240000011312e322e3834302e31303030382e312e325000004c510000040000400052000031312e322e38"
    "32362e302e312e333638303034332e322e313134332e3130372e3130342e3130332e3131352e332e302e32315500000b"
    "4744434d20332e302e3231"
)

# ... its C-MOVE-RQ, sent on context 3 although our AC rejected it: command PDU, identifier PDU
GDCM_MOVE_PDATA = bytes.fromhex(
    "04000000006e0000006a030300000000040000005c000000000002001c000000312e322e3834302e31303030382e352e"
    "312e342e312e322e312e3200000000010200000021000000100102000000010000000006080000004744434d53435520"
    "0000000702000000000000000008020000000100040000000034000000300302080005000a00000049534f5f49522031"
    "3932080052000800000050415449454e5420100020000400000031435431"
)

# CTN dicom_echo -a CTNECHO -c ARCHIVE -p -r 2 127.0.0.1 PORT: A-ASSOCIATE-RQ
CTN_ECHO_RQ = bytes.fromhex(
    "0100000000cf000100004152434849564520202020202020202043544e4543484f202020202020202020000000000000"
    "000000000000000000000000000000000000000000000000000010000015312e322e3834302e31303030382e332e312e"
    "312e312000002e0100000030000011312e322e3834302e31303030382e312e3140000011312e322e3834302e31303030"
    "382e312e325000003c51000004000040005200001d312e322e3834302e3131333635342e322e332e313939352e332e30"
    "2e365500000f4d495243544e31314d415232303033"
)

# ... its C-ECHO-RQ (context 1, message ID 1)
CTN_ECHO_PDATA = bytes.fromhex(
    "04000000004a0000004601030000000004000000380000000000020012000000312e322e3834302e31303030382e312e"
    "3100000000010200000030000000100102000000010000000008020000000101"
)

# CTN dicom_echo -m SCUSCP: A-ASSOCIATE-RQ with SCP/SCU Role Selection (SCU 1, SCP 1) for Verification
CTN_SCUSCP_RQ = bytes.fromhex(
    "0100000000e8000100004152434849564520202020202020202043544e4543484f202020202020202020000000000000"
    "000000000000000000000000000000000000000000000000000010000015312e322e3834302e31303030382e332e312e"
    "312e312000002e0100000030000011312e322e3834302e31303030382e312e3140000011312e322e3834302e31303030"
    "382e312e325000005551000004000040005200001d312e322e3834302e3131333635342e322e332e313939352e332e30"
    "2e365500000f4d495243544e31314d415232303033540000150011312e322e3834302e31303030382e312e310101"
)

# CTN dicom_echo -m SCP: A-ASSOCIATE-RQ with SCP/SCU Role Selection (SCU 0, SCP 1) for Verification
CTN_SCP_ONLY_RQ = bytes.fromhex(
    "0100000000e8000100004152434849564520202020202020202043544e4543484f202020202020202020000000000000"
    "000000000000000000000000000000000000000000000000000010000015312e322e3834302e31303030382e332e312e"
    "312e312000002e0100000030000011312e322e3834302e31303030382e312e3140000011312e322e3834302e31303030"
    "382e312e325000005551000004000040005200001d312e322e3834302e3131333635342e322e332e313939352e332e30"
    "2e365500000f4d495243544e31314d415232303033540000150011312e322e3834302e31303030382e312e310001"
)

# CTN send_image -a CTNSEND -c ARCHIVE -r 127.0.0.1 PORT SC_rgb_rle.dcm (pydicom test file, SOP
# Instance UID changed to 1.2.826.0.1.3680043.2.1143.55.6, PatientID CTN6): A-ASSOCIATE-RQ (SC, RLE only)
CTN_STORE_RQ = bytes.fromhex(
    "0100000000fa000100004152434849564520202020202020202043544e53454e44202020202020202020000000000000"
    "000000000000000000000000000000000000000000000000000010000015312e322e3834302e31303030382e332e312e"
    "312e31200000380100000030000019312e322e3834302e31303030382e352e312e342e312e312e3740000013312e322e"
    "3834302e31303030382e312e322e355000005d51000004000040005200001d312e322e3834302e3131333635342e322e"
    "332e313939352e332e302e365500000f4d495243544e31314d4152323030335400001d0019312e322e3834302e313030"
    "30382e352e312e342e312e312e370100"
)

# ... its C-STORE-RQ: command PDU, two data PDUs, then a last data PDV of ZERO length (control 0x02)
CTN_STORE_PDATA = bytes.fromhex(
    "040000000084000000800103000000000400000072000000000002001a000000312e322e3834302e31303030382e352e"
    "312e342e312e312e37000000000102000000010000001001020000000100000000070200000000000000000802000000"
    "00000000001020000000312e322e3832362e302e312e333638303034332e322e313134332e35352e3600040000000382"
    "0000037e01000800050043530a0049534f5f4952203139320800080043531800444552495645445c5345434f4e444152"
    "595c4f54484552200800160055491a00312e322e3834302e31303030382e352e312e342e312e312e3700080018005549"
    "2000312e322e3832362e302e312e333638303034332e322e313134332e35352e36000800200044410800323031373031"
    "3031080023004441000008002a004454000008003000544d060031323030303008003300544d00000800500053480000"
    "08006000435302004f54080064004353040053594e2008009000504e0e004d6f7269617274795e4a616d657310001000"
    "504e0a004c657374726164655e47100020004c4f040043544e3610003000444100001000400043530200462010001010"
    "4153040030323459180000514353000020000d0055494000312e322e3832362e302e312e333638303034332e382e3439"
    "382e313234303638333135343237333130353130333532393533343530383030333938343531313420000e0055494000"
    "312e322e3832362e302e312e333638303034332e382e3439382e31363135373232393038333739333535363333323632"
    "333333303530323339373132313036322000100053480200312020001100495302003120200013004953020031202000"
    "2000435300002000600043530000200000404c540c015465737420496d616765207769746820313020726f7773206f66"
    "20283235352c302c30292c20313020726f7773206f6620283235352c3132382c313238292c20313020726f7773206f66"
    "2028302c3235352c30292c20313020726f7773206f6620283132382c3235352c313238292c20313020726f7773206f66"
    "2028302c302c323535292c20313020726f7773206f6620283132382c3132382c323535292c20313020726f7773206f66"
    "2028302c302c30292c20313020726f7773206f66202836342c36342c3634292c20313020726f7773206f662028313932"
    "2c3139322c313932292c20313020726f7773206f6620283235352c3235352c323535292c20756e636f6d707265737365"
    "642028000200555302000300280004004353040052474220280006005553020000002800100055530200640028001100"
    "5553020064002800300044530800312e305c312e30202800000155530200080028000101555302000800280002015553"
    "0200070028000301555302000000280006015553020000002800070155530200ff000400000002c2000002be0100e07f"
    "10004f420000fffffffffeff00e000000000feff00e098020000030000004000000008010000d0010000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000009dff9dff9dff"
    "9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9d009d009d009d009d009d009d00"
    "9d009d009d009d809d809d809d809d809d809d809d809d809d809d009d009d009d009d009d009d009d009d009d009d80"
    "9d809d809d809d809d809d809d809d809d809d009d009d009d009d009d009d009d009d009d009d409d409d409d409d40"
    "9d409d409d409d409d409dc09dc09dc09dc09dc09dc09dc09dc09dc09dc09dff9dff9dff9dff9dff9dff9dff9dff9dff"
    "9dff9d009d009d009d009d009d009d009d009d009d009d809d809d809d809d809d809d809d809d809d809dff9dff9dff"
    "9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9d009d009d009d009d009d009d00"
    "9d009d009d009d809d809d809d809d809d809d809d809d809d809d009d009d009d009d009d009d009d009d009d009d40"
    "9d409d409d409d409d409d409d409d409d409dc09dc09dc09dc09dc09dc09dc09dc09dc09dc09dff9dff9dff9dff9dff"
    "9dff9dff9dff9dff9dff9d009d009d009d009d009d009d009d009d009d009d809d809d809d809d809d809d809d809d80"
    "9d809d009d009d009d009d009d009d009d009d009d009d809d809d809d809d809d809d809d809d809d809dff9dff9dff"
    "9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9dff9d009d009d009d009d009d009d00"
    "9d009d009d009d409d409d409d409d409d409d409d409d409d409dc09dc09dc09dc09dc09dc09dc09dc09dc09dc09dff"
    "9dff9dff9dff9dff9dff9dff9dff9dff9dfffeffdde000000000040000000006000000020102"
)

# CTN simple_storage -c CTNSCP -s -m 4096 PORT: A-ASSOCIATE-AC to our SCU (CT, MR, RT Plan, Verification)
CTN_AC_4096 = bytes.fromhex(
    "0200000001170001000043544e534350202020202020202020204f555253435520202020202020202020000000000000"
    "000000000000000000000000000000000000000000000000000010000015312e322e3834302e31303030382e332e312e"
    "312e312100001b0100000040000013312e322e3834302e31303030382e312e322e312100001b0300000040000013312e"
    "322e3834302e31303030382e312e322e312100001b0500000040000013312e322e3834302e31303030382e312e322e31"
    "210000190700000040000011312e322e3834302e31303030382e312e325000003c51000004000010005200001d312e32"
    "2e3834302e3131333635342e322e332e313939352e332e302e365500000f4d495243544e31314d415232303033"
)

# our SCU's A-ASSOCIATE-RQ that CTN_AC_4096 answers
OURS_RQ_TO_CTN = bytes.fromhex(
    "0100000001d00001000043544e534350202020202020202020204f555253435520202020202020202020000000000000"
    "000000000000000000000000000000000000000000000000000010000015312e322e3834302e31303030382e332e312e"
    "312e312000004d0100000030000019312e322e3834302e31303030382e352e312e342e312e312e3240000013312e322e"
    "3834302e31303030382e312e322e3140000011312e322e3834302e31303030382e312e322000004d0300000030000019"
    "312e322e3834302e31303030382e352e312e342e312e312e3440000013312e322e3834302e31303030382e312e322e31"
    "40000011312e322e3834302e31303030382e312e3220000051050000003000001d312e322e3834302e31303030382e35"
    "2e312e342e312e312e3438312e3540000013312e322e3834302e31303030382e312e322e3140000011312e322e383430"
    "2e31303030382e312e322000002e0700000030000011312e322e3834302e31303030382e312e3140000011312e322e38"
    "34302e31303030382e312e325000004651000004000100005200002a322e32352e313034363431363733393436323431"
    "363934353939393331303838363132363435343832395500000c44494d53455f50595f303130"
)

# CTN simple_storage (default max PDU 16384): A-ASSOCIATE-AC rejecting our JPEG 2000-only SC context
# with result 3 (CTN's choice; 4 would be 'transfer syntaxes not supported'), accepting Verification and Study Root FIND
CTN_AC_TS_REJECTED = bytes.fromhex(
    "0200000000f90001000043544e534350202020202020202020204f555253435520202020202020202020000000000000"
    "000000000000000000000000000000000000000000000000000010000015312e322e3834302e31303030382e332e312e"
    "312e312100001e0100030040000016312e322e3834302e31303030382e312e322e342e39312100001903000000400000"
    "11312e322e3834302e31303030382e312e32210000190500000040000011312e322e3834302e31303030382e312e3250"
    "00003c51000004000040005200001d312e322e3834302e3131333635342e322e332e313939352e332e302e365500000f"
    "4d495243544e31314d415232303033"
)

# our SCU's A-ASSOCIATE-RQ that CTN_AC_TS_REJECTED answers
OURS_RQ_TO_CTN_J2K = bytes.fromhex(
    "0100000001540001000043544e534350202020202020202020204f555253435520202020202020202020000000000000"
    "000000000000000000000000000000000000000000000000000010000015312e322e3834302e31303030382e332e312e"
    "312e312000003b0100000030000019312e322e3834302e31303030382e352e312e342e312e312e3740000016312e322e"
    "3834302e31303030382e312e322e342e39312000002e0300000030000011312e322e3834302e31303030382e312e3140"
    "000011312e322e3834302e31303030382e312e3220000038050000003000001b312e322e3834302e31303030382e352e"
    "312e342e312e322e322e3140000011312e322e3834302e31303030382e312e325000004651000004000100005200002a"
    "322e32352e313034363431363733393436323431363934353939393331303838363132363435343832395500000c4449"
    "4d53455f50595f303130"
)

# our SCU's C-FIND-RQ (Study Root, STUDY, StudyInstanceUID empty) on that association: ONE
# P-DATA-TF with two PDVs (command, identifier), which CTN reads fine
OURS_FIND_RQ_TO_CTN = bytes.fromhex(
    "04000000007a0000005a050300000000040000004c000000000002001c000000312e322e3834302e31303030382e352e"
    "312e342e312e322e322e3100000000010200000020000000100102000000020000000007020000000000000000080200"
    "00000100000000180502080052000600000053545544592020000d0000000000"
)

# CTN's first Pending C-FIND-RSP (simulated matches): command PDU with Command Data Set Type
# 0x0102, then identifier PDU (QueryRetrieveLevel STUDY, RetrieveAETitle CTNSCP, PatientName Name:1, ...)
CTN_FIND_PENDING_PDATA = bytes.fromhex(
    "04000000005e0000005a050300000000040000004c000000000002001c000000312e322e3834302e31303030382e352e"
    "312e342e312e322e322e3100000000010200000020800000200102000000020000000008020000000201000000090200"
    "000000ff0400000000400000003c05020800520006000000535455445920080054000600000043544e53435010001000"
    "060000004e616d653a3110003000080000003139393331323031"
)

# CTN's final C-FIND-RSP (Success, Command Data Set Type 0x0101)
CTN_FIND_FINAL_PDATA = bytes.fromhex(
    "04000000005e0000005a050300000000040000004c000000000002001c000000312e322e3834302e31303030382e352e"
    "312e342e312e322e322e3100000000010200000020800000200102000000020000000008020000000101000000090200"
    "00000000"
)

# our SCU (connect(..., async_window=(8, 8), roles={MR: (True, True)})) -> CTN simple_storage:
# A-ASSOCIATE-RQ with Asynchronous Operations Window 8/8 and SCP/SCU Role Selection MR SCU 1, SCP 1
OURS_ASYNC_ROLE_RQ_TO_CTN = bytes.fromhex(
    "0100000001210001000043544e5343502020202020202020202044494d53455f50592020202020202020000000000000"
    "000000000000000000000000000000000000000000000000000010000015312e322e3834302e31303030382e332e312e"
    "312e312000004d0100000030000019312e322e3834302e31303030382e352e312e342e312e312e3440000013312e322e"
    "3834302e31303030382e312e322e3140000011312e322e3834302e31303030382e312e325000006f5100000400010000"
    "5200002a322e32352e313034363431363733393436323431363934353939393331303838363132363435343832395300"
    "0004000800085400001d0019312e322e3834302e31303030382e352e312e342e312e312e3401015500000c44494d5345"
    "5f50595f303130"
)

# CTN simple_storage's A-ASSOCIATE-AC to it: Role Selection MR SCU 1, SCP 0; no Asynchronous Operations
# Window item (so 1/1, PS3.7 D.3.3.3)
CTN_AC_ROLE_NO_ASYNC = bytes.fromhex(
    "0200000000dd0001000043544e5343502020202020202020202044494d53455f50592020202020202020000000000000"
    "000000000000000000000000000000000000000000000000000010000015312e322e3834302e31303030382e332e312e"
    "312e312100001b0100000040000013312e322e3834302e31303030382e312e322e315000005d51000004000040005200"
    "001d312e322e3834302e3131333635342e322e332e313939352e332e302e365500000f4d495243544e31314d41523230"
    "30335400001d0019312e322e3834302e31303030382e352e312e342e312e312e340100"
)

# --------------------------------------------------------------------------- helpers


def identifier(data: bytes, implicit: bool = True) -> Dataset:
    return read_dataset(DicomBytesIO(data), implicit, True)


# --------------------------------------------------------------------------- codec

ROUND_TRIP = {
    "gdcm_echo_rq": GDCM_ECHO_RQ, "gdcm_echo": GDCM_ECHO_PDATA, "ours_ac_gdcm": OURS_ECHO_AC_TO_GDCM,
    "gdcm_find_rq": GDCM_PATIENT_FIND_RQ, "ours_pending": OURS_PENDING_FIND_RSP_TO_GDCM,
    "gdcm_series_rq": GDCM_SERIES_FIND_RQ, "gdcm_move_rq": GDCM_MOVE_RQ,
    "ctn_echo_rq": CTN_ECHO_RQ, "ctn_echo": CTN_ECHO_PDATA, "ctn_scuscp_rq": CTN_SCUSCP_RQ,
    "ctn_scp_only_rq": CTN_SCP_ONLY_RQ, "ctn_store_rq": CTN_STORE_RQ, "ctn_ac_4096": CTN_AC_4096,
    "ours_rq_ctn": OURS_RQ_TO_CTN, "ctn_ac_ts_rejected": CTN_AC_TS_REJECTED,
    "ours_rq_ctn_j2k": OURS_RQ_TO_CTN_J2K, "ours_find_rq_ctn": OURS_FIND_RQ_TO_CTN,
    "ctn_find_final": CTN_FIND_FINAL_PDATA, "release_rq": RELEASE_RQ,
    "ours_async_role_rq_ctn": OURS_ASYNC_ROLE_RQ_TO_CTN, "ctn_ac_role": CTN_AC_ROLE_NO_ASYNC,
}
for _name, _stream in {"gdcm_find": GDCM_PATIENT_FIND_PDATA, "gdcm_series": GDCM_SERIES_FIND_PDATA,
                       "gdcm_move": GDCM_MOVE_PDATA, "ctn_store": CTN_STORE_PDATA,
                       "ctn_find_pending": CTN_FIND_PENDING_PDATA}.items():
    ROUND_TRIP.update({f"{_name}_{i}": b for i, b in enumerate(split_pdus(_stream))})


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_peer_pdu_decodes_and_reencodes_byte_exact(name: str) -> None:
    data = ROUND_TRIP[name]
    assert pdu.encode(pdu.decode(data)) == data
    assert pdu.encode(pdu.decode(memoryview(data))) == data


def test_peer_streams_fed_one_byte_at_a_time_through_the_framer() -> None:
    stream = CTN_STORE_RQ + CTN_STORE_PDATA + RELEASE_RQ + GDCM_MOVE_RQ + GDCM_MOVE_PDATA
    framer = pdu.PduFramer()
    got = [p for i in range(len(stream)) for p in framer.feed(stream[i:i + 1])]
    assert [pdu.encode(p) for p in got] == split_pdus(stream)
    assert framer.buffered == 0
    assert framer.feed(b"\x05\x00") == [] and framer.buffered == 2  # a header cut short waits


def test_gdcm_and_ctn_rq_user_information() -> None:
    gdcm = pdu.decode(GDCM_ECHO_RQ)
    assert isinstance(gdcm, pdu.AAssociateRQ)
    assert (gdcm.called_ae, gdcm.calling_ae) == ("ARCHIVE", "GDCMSCU")
    info = gdcm.user_information
    assert (info.max_length, info.implementation_class_uid) == (16384, GDCM_CLASS_UID)
    assert info.implementation_version_name == "GDCM 3.0.21"
    ctn = pdu.decode(CTN_ECHO_RQ)
    assert isinstance(ctn, pdu.AAssociateRQ)
    assert (ctn.called_ae, ctn.calling_ae) == ("ARCHIVE", "CTNECHO")
    assert ctn.user_information.implementation_class_uid == CTN_CLASS_UID
    assert ctn.user_information.implementation_version_name == "MIRCTN11MAR2003"
    for rq, roles in ((CTN_SCUSCP_RQ, (1, 1)), (CTN_SCP_ONLY_RQ, (0, 1))):
        decoded = pdu.decode(rq)
        assert isinstance(decoded, pdu.AAssociateRQ)
        [role] = [s for s in decoded.user_information.sub_items if isinstance(s, pdu.RoleSelection)]
        assert (role.sop_class_uid, role.scu_role, role.scp_role) == (VERIFICATION, *roles)


def test_ctn_store_ends_with_an_empty_last_data_pdv() -> None:
    last = pdu.decode(split_pdus(CTN_STORE_PDATA)[-1])
    assert isinstance(last, pdu.PDataTF)
    [pdv] = last.pdvs
    assert (pdv.context_id, pdv.is_command, pdv.is_last, len(pdv.data)) == (1, False, True, 0)


def test_ctn_acs_negotiate_as_ctn_answered() -> None:
    rq, ac = pdu.decode(OURS_RQ_TO_CTN), pdu.decode(CTN_AC_4096)
    assert isinstance(rq, pdu.AAssociateRQ) and isinstance(ac, pdu.AAssociateAC)
    negotiated = negotiated_from_ac(rq, ac)
    assert ac.user_information.max_length == 4096
    assert results(ac) == {1: 0, 3: 0, 5: 0, 7: 0}
    assert negotiated is not None
    rq, ac = pdu.decode(OURS_RQ_TO_CTN_J2K), pdu.decode(CTN_AC_TS_REJECTED)
    assert isinstance(rq, pdu.AAssociateRQ) and isinstance(ac, pdu.AAssociateAC)
    assert results(ac) == {1: 3, 3: 0, 5: 0}
    assert ac.user_information.max_length == 16384


def test_ctn_ac_without_async_window_and_with_scu_only_role() -> None:
    rq, ac = pdu.decode(OURS_ASYNC_ROLE_RQ_TO_CTN), pdu.decode(CTN_AC_ROLE_NO_ASYNC)
    assert isinstance(rq, pdu.AAssociateRQ) and isinstance(ac, pdu.AAssociateAC)
    negotiated = negotiated_from_ac(rq, ac)
    assert negotiated.async_window == (1, 1)  # CTN does not answer the window: 1/1 (PS3.7 D.3.3.3)
    [context] = negotiated.contexts.values()
    assert (context.scu_role, context.scp_role) == (True, False)
    assert negotiated.peer_implementation_version_name == "MIRCTN11MAR2003"


def test_ctn_find_responses_decode_with_data_set_type_0102() -> None:
    pending = [pdu.decode(p) for p in split_pdus(CTN_FIND_PENDING_PDATA)]
    command = commands.decode(b"".join(bytes(v.data) for p in pending[:1] for v in p.pdvs))
    assert isinstance(command, CFindRSP)
    assert (command.status, command.command_data_set_type) == (0xFF00, 0x0102)
    data = b"".join(bytes(v.data) for p in pending[1:] for v in p.pdvs)
    match = identifier(data)
    assert (match.QueryRetrieveLevel, str(match.PatientName)) == ("STUDY", "Name:1")
    final = pdu.decode(CTN_FIND_FINAL_PDATA)
    command = commands.decode(b"".join(bytes(v.data) for v in final.pdvs))
    assert isinstance(command, CFindRSP) and command.status == 0x0000


def test_our_pending_find_rsp_to_gdcm_holds_command_then_identifier() -> None:
    pending = pdu.decode(OURS_PENDING_FIND_RSP_TO_GDCM)
    assert isinstance(pending, pdu.PDataTF)
    cmd_pdv, data_pdv = pending.pdvs
    assert (cmd_pdv.is_command, cmd_pdv.is_last, data_pdv.is_command, data_pdv.is_last) == (
        True, True, False, True)
    command = commands.decode(bytes(cmd_pdv.data))
    assert isinstance(command, CFindRSP) and command.status == 0xFF00
    match = identifier(bytes(data_pdv.data))
    assert match.QueryRetrieveLevel == "PATIENT"
    assert str(match.PatientID) == "1CT1"


# --------------------------------------------------------------------------- replay


@pytest.mark.parametrize("rq, echo", [(GDCM_ECHO_RQ, GDCM_ECHO_PDATA),
                                      (CTN_ECHO_RQ, CTN_ECHO_PDATA),
                                      (CTN_SCUSCP_RQ, CTN_ECHO_PDATA),
                                      (CTN_SCP_ONLY_RQ, CTN_ECHO_PDATA)],
                         ids=["gdcm", "ctn", "ctn_scuscp", "ctn_scp_only"])
async def test_echo_replayed_against_our_server(rq: bytes, echo: bytes) -> None:
    async with Server("ARCHIVE") as server:
        peer = await RawPeer.open(server.port)
        try:
            ac = await peer.associate(rq)
            assert results(ac) == {1: 0}
            assert ac.user_information.max_length == server.policy.max_pdu
            # no role is granted that the requestor did not ask for (PS3.7 D.3.3.4)
            roles = [s for s in ac.user_information.sub_items if isinstance(s, pdu.RoleSelection)]
            assert all(not r.scp_role for r in roles)
            await peer.send(echo)
            rsp, data = await peer.message()
            assert isinstance(rsp, CEchoRSP) and data is None
            assert (rsp.message_id_being_responded_to, rsp.status) == (1, 0)
            await peer.release()
        finally:
            await peer.close()


async def test_gdcm_patient_find_replayed_against_our_server() -> None:
    seen: list[FindRequest] = []
    async with find_server("ARCHIVE", seen) as server:
        peer = await RawPeer.open(server.port)
        try:
            assert results(await peer.associate(GDCM_PATIENT_FIND_RQ)) == {1: 0}
            await peer.send(GDCM_PATIENT_FIND_PDATA)
            names = []
            while True:
                rsp, data = await peer.message()
                assert isinstance(rsp, CFindRSP) and rsp.message_id_being_responded_to == 1
                if rsp.status != 0xFF00:
                    break
                assert data is not None
                match = identifier(data)
                assert match.QueryRetrieveLevel == "PATIENT"
                names.append(str(match.PatientName))
            assert (rsp.status, data) == (0x0000, None)
            assert names == ["DOE^J0", "DOE^J1"]
            assert seen[0].identifier.SpecificCharacterSet == "ISO_IR 192"
            await peer.release()
        finally:
            await peer.close()


async def test_gdcm_series_find_replayed_against_the_archive(tmp_path: Path) -> None:
    archive = archive_with_ct_small(tmp_path / "archive")
    try:
        async with archive_server(archive, "ARCHIVE") as server:
            peer = await RawPeer.open(server.port)
            try:
                assert results(await peer.associate(GDCM_SERIES_FIND_RQ)) == {1: 0}
                await peer.send(GDCM_SERIES_FIND_PDATA)
                rsp, data = await peer.message()
                assert isinstance(rsp, CFindRSP) and rsp.status == 0xFF00 and data is not None
                match = identifier(data)
                assert match.QueryRetrieveLevel == "SERIES"
                assert (match.StudyInstanceUID, match.SeriesInstanceUID) == (
                    CT_SMALL_STUDY, CT_SMALL_SERIES)
                assert match.Modality == "CT"
                rsp, data = await peer.message()
                assert isinstance(rsp, CFindRSP) and (rsp.status, data) == (0x0000, None)
                await peer.release()
            finally:
                await peer.close()
    finally:
        archive.close()


async def test_gdcm_move_on_rejected_context_is_aborted_and_server_keeps_serving(
        tmp_path: Path) -> None:
    archive = archive_with_ct_small(tmp_path / "archive")
    try:
        async with archive_server(archive, "ARCHIVE") as server:
            peer = await RawPeer.open(server.port)
            try:
                # C-MOVE is not offered: the MOVE context is refused, FIND accepted (PS3.8 9.3.3.2)
                assert results(await peer.associate(GDCM_MOVE_RQ)) == {1: 0, 3: 3}
                await peer.send(GDCM_MOVE_PDATA)  # GDCM sends on context 3 regardless
                answer = pdu.decode(await peer.pdu())
                # PS3.8 Table 9-10 AA-1; closing the transport is then the requestor's (AA-3)
                assert isinstance(answer, pdu.AAbort)
            finally:
                await peer.close()
            peer = await RawPeer.open(server.port)
            try:
                assert results(await peer.associate(GDCM_ECHO_RQ)) == {1: 0}
                await peer.send(GDCM_ECHO_PDATA)
                rsp, _ = await peer.message()
                assert isinstance(rsp, CEchoRSP) and rsp.status == 0
                await peer.release()
            finally:
                await peer.close()
    finally:
        archive.close()


async def test_ctn_store_with_empty_last_pdv_replayed_against_our_server() -> None:
    stored: list[tuple[CStoreRQ, ReceivedDataSet]] = []
    async with store_server("ARCHIVE", stored) as server:
        peer = await RawPeer.open(server.port)
        try:
            ac = await peer.associate(CTN_STORE_RQ)
            assert [(pc.context_id, pc.result, pc.transfer_syntax)
                    for pc in ac.presentation_contexts] == [(1, 0, "1.2.840.10008.1.2.5")]
            await peer.send(CTN_STORE_PDATA)
            rsp, data = await peer.message()
            assert isinstance(rsp, CStoreRSP) and data is None
            assert rsp.status == 0x0000
            assert rsp.affected_sop_instance_uid == "1.2.826.0.1.3680043.2.1143.55.6"
            await peer.release()
        finally:
            await peer.close()
    [(rq, received)] = stored
    assert rq.affected_sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"
    assert received.transfer_syntax == "1.2.840.10008.1.2.5"
    sent = b"".join(bytes(v.data) for p in split_pdus(CTN_STORE_PDATA)[1:]
                    for v in pdu.decode(p).pdvs)
    assert received.data is not None and bytes(received.data) == sent
    # RLE data sets are explicit VR little endian (PS3.5 A.4)
    dataset = identifier(sent, implicit=False)
    assert dataset.SOPInstanceUID == rq.affected_sop_instance_uid
    assert dataset.PatientID == "CTN6"
    assert dataset["PixelData"].is_undefined_length


async def test_ctn_echo_then_tcp_close_without_release_leaves_server_serving() -> None:
    # dicom_echo -x: echo, then the TCP connection is closed with no A-RELEASE-RQ
    async with Server("ARCHIVE") as server:
        for _ in range(2):
            peer = await RawPeer.open(server.port)
            assert results(await peer.associate(CTN_ECHO_RQ)) == {1: 0}
            await peer.send(CTN_ECHO_PDATA)
            rsp, _ = await peer.message()
            assert isinstance(rsp, CEchoRSP) and rsp.status == 0
            await peer.close()
        peer = await RawPeer.open(server.port)
        try:
            assert results(await peer.associate(CTN_ECHO_RQ)) == {1: 0}
            await peer.release()
        finally:
            await peer.close()
