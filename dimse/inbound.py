"""Incoming C-STORE data sets streamed into a sink as their PDVs arrive (used by the association).

The association's :class:`~dimse.assembly.MessageAssembler` asks :meth:`InboundStores.streams`
whether a command's data set goes to a sink; if so it hands over the command
(:meth:`InboundStores.start`) and then every fragment (:meth:`InboundStores.fragment`); the
request is performed once the last fragment is in. A sink that cannot be opened or written is
recorded, the rest of the data set is dropped, and the request fails with a status: the
:class:`~dimse.errors.ServiceError`'s a sink raises (logged by the sink, as a handler's are
by the handler), else 0xA700 for an OSError (logged here with its traceback).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .assembly import CommandReceived, DataFragment, MessageAssembler
from .errors import ServiceError
from .messages import CStoreRQ, Message
from .services import DataSetSink, ReceivedDataSet, RequestContext

if TYPE_CHECKING:
    from .association import Association

#: ErrorComment of the 0x0122 refusing a request on a context where we are not SCP.
ROLE_REFUSED = "not SCP on this presentation context (SCP/SCU role selection)"

__all__ = ["InboundStores"]

log = logging.getLogger(__name__)


class _Streaming:
    """A C-STORE request whose data set is being streamed into a sink."""

    __slots__ = ("error", "request", "sink")

    def __init__(self, request: RequestContext, sink: DataSetSink | None,
                 error: BaseException | None) -> None:
        self.request = request
        self.sink = sink
        self.error = error


class InboundStores:
    """The message assembler of one association and the C-STORE being streamed, if any."""

    __slots__ = ("_assoc", "_streaming", "assembler")

    def __init__(self, assoc: Association, max_identifier_length: int | None,
                 max_dataset_length: int | None) -> None:
        self._assoc = assoc
        self._streaming: _Streaming | None = None
        self.assembler = MessageAssembler(self.streams, max_dataset_length=max_dataset_length,
                                          max_identifier_length=max_identifier_length)

    def streams(self, context_id: int, message: Message) -> bool:
        return isinstance(message, CStoreRQ) and self._assoc.handlers.streams(message)

    def start(self, event: CommandReceived) -> None:
        assoc = self._assoc
        cx = assoc._request_context(event.context_id)
        if cx is None:
            return
        request = RequestContext(assoc, cx, event.message, None)
        if not assoc.may_perform(cx):  # the data set is read and dropped, then refused
            log.warning("C-STORE-RQ on context %d, where we are not SCP: refused 0x0122",
                        event.context_id)
            self._streaming = _Streaming(request, None, ServiceError(0x0122, ROLE_REFUSED))
            return
        try:
            sink = assoc.handlers.sink_for(event.message, request)
        except ServiceError as exc:  # refused by the sink, which logs what it needs to
            self._streaming = _Streaming(request, None, exc)
            return
        except Exception as exc:  # the sink cannot be opened: drop the data, answer failure
            log.exception("cannot open a sink for %r", event.message)
            self._streaming = _Streaming(request, None, exc)
            return
        self._streaming = _Streaming(request, sink, None)

    def fragment(self, event: DataFragment) -> None:
        streaming = self._streaming
        assert streaming is not None
        if streaming.sink is not None and streaming.error is None:
            try:
                streaming.sink.write(event.data)  # type: ignore[arg-type]
                if event.last:
                    streaming.sink.finish()
            except Exception as exc:  # a full disk: keep reading, answer failure
                if not isinstance(exc, ServiceError):  # a ServiceError is the sink's refusal
                    log.exception("sink write failed")
                streaming.error = exc
                streaming.sink.discard()
        if not event.last:
            return
        self._streaming = None
        request = streaming.request
        dataset = ReceivedDataSet(request.context.transfer_syntax, None, streaming.sink,
                                  streaming.error)
        self._assoc._on_request(RequestContext(self._assoc, request.context, request.message,
                                               dataset))

    def discard(self) -> Message | None:
        """Drop a partly received message; a half-written sink leaves no trace. Returns the
        C-STORE request whose data set was being streamed, if any (for the log)."""
        self.assembler.discard()
        streaming, self._streaming = self._streaming, None
        if streaming is None:
            return None
        if streaming.sink is not None:
            streaming.sink.discard()
        return streaming.request.message
