"""Streaming framer: byte chunks of any size in, whole decoded PDUs out (sans-IO).

The 6-byte header is checked (known PDU type, fixed sizes, length limits) before any buffer for
the body is allocated, so a peer cannot make us reserve memory by announcing a huge PDU. PDUs that
lie whole inside one immutable ``bytes`` chunk are decoded in place (their PDV data are slices of
that chunk); a PDU spread over several chunks is collected in a buffer of exactly its size, made
up front for PDUs of up to :data:`PREALLOCATE` bytes and grown as the bytes arrive beyond that.
So even with no limit (a maximum length of 0, which PS3.8 allows), memory follows what the peer
really sent, never what its header announced.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from .constants import DEFAULT_MAX_ASSOCIATE_PDU_LENGTH
from .errors import PduDecodeError
from .pdus import Pdu, check_header, decode

_PDU_HDR = struct.Struct(">BBI")
#: PDUs up to this size (header included) get their whole buffer at once; larger ones grow.
PREALLOCATE = 1 << 20


class PduFramer:
    """Cut a byte stream into PDUs. After a PduDecodeError the framer refuses further input.

    ``max_pdata_length`` limits the PDU-length of P-DATA-TF (0 = no limit), ``max_other_length``
    that of the other PDUs (0 = no limit).
    """

    __slots__ = ("max_pdata_length", "max_other_length", "_head", "_body", "_filled", "_total",
                 "_error")

    def __init__(self, max_pdata_length: int = 0,
                 max_other_length: int = DEFAULT_MAX_ASSOCIATE_PDU_LENGTH) -> None:
        self.max_pdata_length = max_pdata_length
        self.max_other_length = max_other_length
        self._head = bytearray()           # a partial 6-byte header
        self._body: bytearray | None = None  # the PDU being collected (header included)
        self._filled = 0
        self._total = 0  # the size of the PDU being collected
        self._error: PduDecodeError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned PDU."""
        return len(self._head) + self._filled

    def feed(self, data: bytes | bytearray | memoryview) -> list[Pdu]:
        """Add a chunk; return the PDUs it completes (maybe none). Raises PduDecodeError."""
        return list(self.iter_feed(data))

    def iter_feed(self, data: bytes | bytearray | memoryview) -> Iterator[Pdu]:
        """Like ``feed`` but yields each PDU as soon as it is decoded, so PDUs that precede a
        malformed one in the same chunk can be processed before the error is raised."""
        if self._error is not None:
            raise self._error
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        immutable = isinstance(view.obj, bytes)
        try:
            yield from self._cut(view, immutable)
        except PduDecodeError as exc:
            self._error = exc
            self._head.clear()
            self._body = None
            self._filled = 0
            raise

    def _start(self, pdu_type: int, length: int) -> int:
        check_header(pdu_type, length, self.max_pdata_length, self.max_other_length)
        return 6 + length

    def _cut(self, view: memoryview, immutable: bool) -> Iterator[Pdu]:
        pos = 0
        size = len(view)
        while pos < size:
            body = self._body
            if body is not None:  # continue a PDU spread over chunks
                n = min(self._total - self._filled, size - pos)
                if len(body) == self._total:
                    body[self._filled:self._filled + n] = view[pos:pos + n]
                else:  # a large PDU: grown as its bytes arrive
                    body += view[pos:pos + n]
                self._filled += n
                pos += n
                if self._filled == self._total:
                    self._body = None
                    self._filled = 0
                    yield decode(body)
                continue
            if self._head or size - pos < 6:  # collect a split header
                n = min(6 - len(self._head), size - pos)
                self._head += view[pos:pos + n]
                pos += n
                if len(self._head) < 6:
                    continue
                pdu_type, _, length = _PDU_HDR.unpack(self._head)
                total = self._start(pdu_type, length)
                body = bytearray(total) if total <= PREALLOCATE else bytearray(6)
                body[:6] = self._head
                self._head.clear()
                self._body, self._filled, self._total = body, 6, total
                if total == 6:
                    self._body, self._filled = None, 0
                    yield decode(body)
                continue
            pdu_type, _, length = _PDU_HDR.unpack_from(view, pos)
            total = self._start(pdu_type, length)
            if size - pos >= total:  # the whole PDU is in this chunk
                chunk = view[pos:pos + total]
                pos += total
                yield decode(chunk if immutable else bytes(chunk))
                continue
            n = size - pos
            if total <= PREALLOCATE:
                body = bytearray(total)
                body[:n] = view[pos:]
            else:
                body = bytearray(view[pos:])
            pos = size
            self._body, self._filled, self._total = body, n, total
