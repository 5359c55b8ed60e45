"""Group-0000 command set codec: implicit VR little endian, CommandGroupLength first (PS3.7 6.3.1).

Driven by :data:`dimse.messages.SPECS`: at import, every message class gets an encoding plan
(its elements in tag order with precompiled ``struct`` packers and the command field element
pre-encoded), so :func:`encode` is one pass building a list of parts and one ``join``.

:func:`decode` is lenient where real peers differ and strict where it matters:

* CommandGroupLength missing or wrong: ignored (the length comes from the bytes);
* UIDs padded with NUL or space: both stripped; AE/LO padding spaces stripped;
* CommandDataSetType: any value other than 0x0101 means a data set follows (kept as sent);
* elements the spec does not list: kept in ``message.unexpected`` and logged, not fatal;
* a missing mandatory element, a truncated element, a bad value length or an unknown command
  field: :class:`~dimse.errors.CommandDecodeError` naming the tag (and offset when known).

Any byte string either decodes to a message or raises ``CommandDecodeError``.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

from .errors import CommandDecodeError, LocalProtocolError
from .messages import ELEMENTS, MESSAGE_TYPES, SPECS, VR, Message, Presence, Priority

__all__ = ["CommandEncodeError", "UnknownCommandError", "decode", "encode"]

log = logging.getLogger(__name__)

_HDR = struct.Struct("<HHI")  # group, element, value length
_US_EL = struct.Struct("<HHIH")  # a whole US element
_UL_EL = struct.Struct("<HHII")  # a whole UL element
_U16 = struct.Struct("<H")
_TAG_GROUP_LENGTH = 0x00000000
_TAG_COMMAND_FIELD = 0x00000100
_TAG_MESSAGE_ID = 0x00000110
_MAX_LEN = {VR.UI: 64, VR.AE: 16, VR.LO: 64}
_PAD = {VR.UI: b"\x00", VR.AE: b" ", VR.LO: b" "}


class CommandEncodeError(LocalProtocolError, ValueError):
    """A message whose fields cannot be encoded (mandatory field missing, value out of range)."""

    def __init__(self, message: str, *, tag: int | None = None) -> None:
        self.tag = tag
        where = f"({tag >> 16:04X},{tag & 0xFFFF:04X}): " if tag is not None else ""
        super().__init__(f"{where}{message}")


class UnknownCommandError(CommandDecodeError):
    """A command set whose CommandField is not a DIMSE-C message we know.

    ``message_id`` is the MessageID when it could be read, so an SCP can answer 0x0211
    (unrecognized operation) as PS3.7 asks.
    """

    def __init__(self, command_field: int, message_id: int | None) -> None:
        self.command_field = command_field
        self.message_id = message_id
        super().__init__(f"unknown command field 0x{command_field:04X}", tag=_TAG_COMMAND_FIELD)


# ---------------------------------------------------------------------------------------------
# encoding

_KIND_US, _KIND_STR, _KIND_AT = 0, 1, 2
_Plan = tuple[tuple[str, int, int, bool, VR, bytes, int], ...]


def _make_plan(command_field: int) -> tuple[_Plan, bytes]:
    """(attr, element number, kind, mandatory, vr, padding, maximum length) per field in tag
    order, and the pre-encoded CommandField element (no enum hashing per message)."""
    plan = []
    for tag, presence in SPECS[command_field].fields:
        el = ELEMENTS[tag]
        kind = _KIND_US if el.vr is VR.US else _KIND_AT if el.vr is VR.AT else _KIND_STR
        plan.append((el.attr, tag & 0xFFFF, kind, presence is Presence.MANDATORY, el.vr,
                     _PAD.get(el.vr, b""), _MAX_LEN.get(el.vr, 0)))
    return tuple(plan), _US_EL.pack(0, 0x0100, 2, command_field)


_PLANS: dict[type, tuple[_Plan, bytes]] = {
    cls: _make_plan(cf) for cf, cls in MESSAGE_TYPES.items()
}


def encode(msg: Message) -> bytes:
    """Encode ``msg``'s command set (implicit VR LE, group length first, ascending tags)."""
    try:
        plan, cf_element = _PLANS[type(msg)]
    except KeyError:
        raise CommandEncodeError(f"not a DIMSE-C message: {type(msg).__name__}") from None
    parts: list[bytes] = [b""]  # placeholder for CommandGroupLength
    cf_pending = True
    for attr, elem, kind, mandatory, vr, pad, max_len in plan:
        if cf_pending and elem > 0x0100:
            parts.append(cf_element)
            cf_pending = False
        value = getattr(msg, attr)
        if value is None:
            if mandatory:
                raise CommandEncodeError(f"mandatory {attr} is missing", tag=elem)
            continue
        if kind == _KIND_US:
            try:
                parts.append(_US_EL.pack(0, elem, 2, value))
            except struct.error:
                raise CommandEncodeError(f"{attr}={value!r} is not a 16-bit unsigned integer",
                                         tag=elem) from None
        elif kind == _KIND_STR:
            parts += _encode_text(attr, elem, value, vr, pad, max_len)
        else:
            parts += _encode_at(attr, elem, value)
    if cf_pending:
        parts.append(cf_element)
    length = sum(map(len, parts))
    parts[0] = _UL_EL.pack(0, 0, 4, length)
    return b"".join(parts)


def _encode_text(attr: str, elem: int, value: str, vr: VR, pad: bytes,
                 max_len: int) -> tuple[bytes, bytes]:
    try:
        raw = value.encode("ascii")
    except (UnicodeEncodeError, AttributeError):
        raise CommandEncodeError(f"{attr}={value!r} is not an ASCII string", tag=elem) from None
    if len(raw) > max_len or (vr is VR.UI and b"\\" in raw):
        raise CommandEncodeError(f"{attr}={value!r} is not a valid {vr.value}", tag=elem)
    if len(raw) & 1:
        raw += pad
    return _HDR.pack(0, elem, len(raw)), raw


def _encode_at(attr: str, elem: int, value: tuple[int, ...]) -> tuple[bytes, bytes]:
    try:
        raw = b"".join(_U16.pack(t >> 16) + _U16.pack(t & 0xFFFF) for t in value)
    except (struct.error, TypeError):
        raise CommandEncodeError(f"{attr}={value!r} is not a sequence of 32-bit tags",
                                 tag=elem) from None
    return _HDR.pack(0, elem, len(raw)), raw


# ---------------------------------------------------------------------------------------------
# decoding

def _us(tag: int, raw: memoryview) -> int | None:
    if len(raw) == 2:
        return int(_U16.unpack(raw)[0])
    if not raw:
        return None
    raise CommandDecodeError(f"US value of length {len(raw)} (expected 2)", tag=tag)


def _ui(tag: int, raw: memoryview) -> str:
    try:
        return bytes(raw).decode("ascii").strip(" \x00")
    except UnicodeDecodeError:
        raise CommandDecodeError("UID is not ASCII", tag=tag) from None


def _text(tag: int, raw: memoryview) -> str:
    return bytes(raw).decode("utf-8", "replace").strip(" \x00")


def _at(tag: int, raw: memoryview) -> tuple[int, ...]:
    if len(raw) % 4:
        raise CommandDecodeError(f"AT value of length {len(raw)} (not a multiple of 4)", tag=tag)
    words = struct.unpack(f"<{len(raw) // 2}H", raw)
    return tuple((words[i] << 16) | words[i + 1] for i in range(0, len(words), 2))


_DECODERS: dict[VR, Callable[[int, memoryview], Any]] = {
    VR.US: _us, VR.UL: _us, VR.UI: _ui, VR.AE: _text, VR.LO: _text, VR.AT: _at,
}


#: Per command field: (tag, attr, decoder, mandatory, keyword) per element, in spec order.
_DECODE_PLANS: dict[int, tuple[tuple[int, str, Callable[[int, memoryview], Any], bool, str], ...]] = {
    cf: tuple((tag, ELEMENTS[tag].attr, _DECODERS[ELEMENTS[tag].vr],
               presence is Presence.MANDATORY, ELEMENTS[tag].keyword)
              for tag, presence in spec.fields)
    for cf, spec in SPECS.items()
}


def _split(data: bytes | bytearray | memoryview) -> tuple[dict[int, memoryview], list[int]]:
    """Cut the command set into {tag: raw value}; duplicate tags are returned separately."""
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    end = len(view)
    values: dict[int, memoryview] = {}
    duplicates: list[int] = []
    offset = 0
    while offset < end:
        if end - offset < 8:
            raise CommandDecodeError(f"truncated element header ({end - offset} bytes left)",
                                     offset=offset)
        group, elem, length = _HDR.unpack_from(view, offset)
        tag = (group << 16) | elem
        start = offset + 8
        if length > end - start:
            raise CommandDecodeError(f"value length {length} exceeds the {end - start} bytes "
                                     "left", tag=tag, offset=offset)
        if tag in values:
            duplicates.append(tag)
        else:
            values[tag] = view[start:start + length]
        offset = start + length
    return values, duplicates


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Decode a command set into its message dataclass (see the module docstring for leniency)."""
    values, duplicates = _split(data)
    raw_cf = values.pop(_TAG_COMMAND_FIELD, None)
    command_field = _us(_TAG_COMMAND_FIELD, raw_cf) if raw_cf is not None else None
    if command_field is None:
        raise CommandDecodeError("mandatory CommandField is missing", tag=_TAG_COMMAND_FIELD)
    spec = SPECS.get(command_field)
    if spec is None:
        raw_id = values.get(_TAG_MESSAGE_ID)
        message_id = _us(_TAG_MESSAGE_ID, raw_id) if raw_id is not None and len(raw_id) == 2 \
            else None
        raise UnknownCommandError(command_field, message_id)
    values.pop(_TAG_GROUP_LENGTH, None)
    kwargs: dict[str, Any] = {}
    pop = values.pop
    for tag, attr, decoder, mandatory, keyword in _DECODE_PLANS[command_field]:
        raw = pop(tag, None)
        value = None if raw is None else decoder(tag, raw)
        if value is None and mandatory:
            raise CommandDecodeError(f"mandatory {keyword} is missing from {spec.name}",
                                     tag=tag)
        kwargs[attr] = value  # None when absent: defaults must not invent elements
    if "priority" in kwargs and kwargs["priority"] in (0, 1, 2):
        kwargs["priority"] = Priority(kwargs["priority"])
    if values or duplicates:
        unexpected = tuple((t, bytes(v)) for t, v in values.items())
        log.warning("%s carries unexpected elements %s%s", spec.name,
                    ", ".join(f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in values),
                    f"; duplicates ignored: {duplicates}" if duplicates else "")
        kwargs["unexpected"] = unexpected
    return MESSAGE_TYPES[command_field](**kwargs)
