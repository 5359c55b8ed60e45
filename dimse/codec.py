"""The performance-tuned identifier / data set codec (PS3.5 data set encoding, PS3.7 6.3.1).

``encode`` and ``decode`` handle the data set of a DIMSE message (no file meta, no preamble) in
Implicit VR Little Endian, Explicit VR Little/Big Endian and Deflated Explicit VR Little Endian.
``encode`` produces the same bytes as pydicom's ``write_dataset``; ``decode`` produces a normal
pydicom ``Dataset`` whose values are converted as pydicom converts them. ``IdentifierTemplate``
is the gateway fast path: compiled once for a fixed list of keys, filled from plain values.
"""

from __future__ import annotations

from dimse._codec_decode import decode, inflate
from dimse._codec_encode import deflate, encode
from dimse._vr import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    SYNTAXES,
)
from dimse.template import IdentifierTemplate

#: The transfer syntaxes this codec supports.
SUPPORTED_TRANSFER_SYNTAXES: tuple[str, ...] = tuple(SYNTAXES)

__all__ = [
    "DEFLATED_EXPLICIT_VR_LE",
    "EXPLICIT_VR_BE",
    "EXPLICIT_VR_LE",
    "IMPLICIT_VR_LE",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "IdentifierTemplate",
    "decode",
    "deflate",
    "encode",
    "inflate",
]
