"""Codes and defaults of the DICOM Upper Layer (PS3.8 section 9 and Annex D)."""

from __future__ import annotations

from enum import IntEnum

DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

#: Our implementation class UID and version name, sent in every A-ASSOCIATE-RQ/AC.
IMPLEMENTATION_CLASS_UID = "2.25.1046416739462416945999310886126454829"
IMPLEMENTATION_VERSION_NAME = "DIMSE_PY_010"

#: The largest PDU-length of P-DATA-TF we announce by default (like DCMTK's 16384, but larger).
DEFAULT_MAX_PDU_LENGTH = 65536
#: What we send at most per P-DATA-TF when the peer announces 0 (no limit).
UNLIMITED_SEND_CAP = 1 << 20
#: Cap on the size of non-P-DATA PDUs (A-ASSOCIATE-RQ/AC) we are willing to buffer.
DEFAULT_MAX_ASSOCIATE_PDU_LENGTH = 1 << 20

PDU_HEADER_LENGTH = 6


class PduType(IntEnum):
    A_ASSOCIATE_RQ = 0x01
    A_ASSOCIATE_AC = 0x02
    A_ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    A_RELEASE_RQ = 0x05
    A_RELEASE_RP = 0x06
    A_ABORT = 0x07


class ItemType(IntEnum):
    APPLICATION_CONTEXT = 0x10
    PRESENTATION_CONTEXT_RQ = 0x20
    PRESENTATION_CONTEXT_AC = 0x21
    ABSTRACT_SYNTAX = 0x30
    TRANSFER_SYNTAX = 0x40
    USER_INFORMATION = 0x50
    MAXIMUM_LENGTH = 0x51
    IMPLEMENTATION_CLASS_UID = 0x52
    ASYNCHRONOUS_OPERATIONS_WINDOW = 0x53
    ROLE_SELECTION = 0x54
    IMPLEMENTATION_VERSION_NAME = 0x55
    SOP_CLASS_EXTENDED_NEGOTIATION = 0x56
    SOP_CLASS_COMMON_EXTENDED_NEGOTIATION = 0x57
    USER_IDENTITY_RQ = 0x58
    USER_IDENTITY_AC = 0x59


class RejectResult(IntEnum):
    REJECTED_PERMANENT = 1
    REJECTED_TRANSIENT = 2


class RejectSource(IntEnum):
    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


class RejectReason(IntEnum):
    """A-ASSOCIATE-RJ reason; its meaning depends on the source (PS3.8 Table 9-21)."""

    NO_REASON = 1
    # source 1 (service user)
    APPLICATION_CONTEXT_NOT_SUPPORTED = 2
    CALLING_AE_NOT_RECOGNIZED = 3
    CALLED_AE_NOT_RECOGNIZED = 7
    # source 2 (ACSE): 2 = protocol version not supported (same value as 2 above)
    # source 3 (presentation): 1 = temporary congestion, 2 = local limit exceeded


PROTOCOL_VERSION_NOT_SUPPORTED = 2
TEMPORARY_CONGESTION = 1
LOCAL_LIMIT_EXCEEDED = 2


class AbortSource(IntEnum):
    SERVICE_USER = 0
    RESERVED = 1
    SERVICE_PROVIDER = 2


class AbortReason(IntEnum):
    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    RESERVED = 3
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER_VALUE = 6


class ContextResult(IntEnum):
    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


class UserIdentityType(IntEnum):
    USERNAME = 1
    USERNAME_AND_PASSCODE = 2
    KERBEROS = 3
    SAML = 4
    JWT = 5
