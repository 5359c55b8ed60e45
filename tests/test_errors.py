import pickle

from dimse.errors import IdentifierError, ServiceError
from pdu.constants import AbortReason
from pdu.errors import DicomError, PduDecodeError, ProtocolError, RemoteProtocolError


def test_decode_error_names_where_and_why() -> None:
    err = PduDecodeError("length 9 overruns parent", offset=74, item="PresentationContextRQ",
                         field="item-length", abort_reason=AbortReason.INVALID_PDU_PARAMETER_VALUE)
    assert isinstance(err, RemoteProtocolError)
    assert isinstance(err, ProtocolError)
    assert isinstance(err, DicomError)
    assert "offset 74" in str(err) and "PresentationContextRQ.item-length" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert (again.offset, again.item, again.field, again.abort_reason) == (
        74, "PresentationContextRQ", "item-length", AbortReason.INVALID_PDU_PARAMETER_VALUE)


def test_service_and_identifier_errors_carry_status() -> None:
    err = ServiceError(0xA900, "no level", [0x00080052])
    assert err.status == 0xA900 and err.offending_elements == (0x00080052,)
    assert "0xA900" in str(err)
    ierr = IdentifierError("missing PatientID", offending=[0x00100020], status=0xC000)
    assert isinstance(ierr, ValueError) and ierr.offending == (0x00100020,)
