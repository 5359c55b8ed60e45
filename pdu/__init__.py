"""DICOM Upper Layer (PS3.8): PDUs, items, framing, the state machine. Sans-IO."""

from .errors import PduDecodeError, PduEncodeError
from .framer import PduFramer
from .items import (
    ApplicationContextItem,
    AssociateItem,
    AsynchronousOperationsWindow,
    ImplementationClassUID,
    ImplementationVersionName,
    MaximumLength,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UnknownItem,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
    UserSubItem,
)
from .pdus import (
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    Pdu,
    PresentationDataValue,
    check_header,
    decode,
    encode,
    is_ae_title,
)

__all__ = [
    "AAbort", "AAssociateAC", "AAssociateRJ", "AAssociateRQ", "AReleaseRP", "AReleaseRQ",
    "ApplicationContextItem", "AssociateItem", "AsynchronousOperationsWindow",
    "ImplementationClassUID", "ImplementationVersionName", "MaximumLength", "PDataTF", "Pdu",
    "PduDecodeError", "PduEncodeError", "PduFramer", "PresentationContextAC", "PresentationContextRQ", "PresentationDataValue",
    "RoleSelection", "SOPClassCommonExtendedNegotiation", "SOPClassExtendedNegotiation",
    "UnknownItem", "UserIdentityAC", "UserIdentityRQ", "UserInformation", "UserSubItem",
    "check_header", "decode", "encode", "is_ae_title",
]
