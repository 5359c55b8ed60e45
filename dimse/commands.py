"""Group-0000 command set codec: implicit VR little endian, CommandGroupLength first (PS3.7 6.3.1).

Driven by :data:`dimse.messages.SPECS`: at import, every message class gets an encoding plan
(its elements in tag order, one ``attrgetter`` reading them all, the command field element
pre-encoded), so :func:`encode` is one pass building a list of parts and one ``join``.

Decoding has two paths with one behaviour. The fast path walks a canonical command set (known,
unique elements in tag order, all well formed) once, in step with the plan of its command field.
Anything else goes to the exact decoder, which applies the rules below and reports errors in a
fixed order; the fast path only ever returns what the exact one would (tested differentially).

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

import contextlib
import logging
import struct
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from .errors import CommandDecodeError, LocalProtocolError
from .messages import ELEMENTS, MESSAGE_TYPES, SPECS, VR, Message, Presence, Priority

__all__ = ["CommandEncodeError", "UnknownCommandError", "decode", "encode", "encode_unrecognized"]

log = logging.getLogger(__name__)

_HDR = struct.Struct("<HHI")  # group, element, value length
_US_EL = struct.Struct("<HHIH")  # a whole US element
_UL_EL = struct.Struct("<HHII")  # a whole UL element
_U16 = struct.Struct("<H")
_TAG_GROUP_LENGTH = 0x00000000
_TAG_COMMAND_FIELD = 0x00000100
_TAG_MESSAGE_ID = 0x00000110
_TAG_AFFECTED_SOP_CLASS = 0x00000002
_TAG_REQUESTED_SOP_CLASS = 0x00000003
_TAG_DATA_SET_TYPE = 0x00000800
_MAX_LEN = {VR.UI: 64, VR.AE: 16, VR.LO: 64}


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

    def __init__(self, command_field: int, message_id: int | None, *,
                 has_dataset: bool | None = None, sop_class_uid: str | None = None) -> None:
        self.command_field = command_field
        self.message_id = message_id
        #: Whether a data set follows (None: CommandDataSetType absent or unreadable).
        self.has_dataset = has_dataset
        #: Affected (or Requested) SOP Class UID, when one could be read.
        self.sop_class_uid = sop_class_uid
        super().__init__(f"unknown command field 0x{command_field:04X}", tag=_TAG_COMMAND_FIELD)


# ---------------------------------------------------------------------------------------------
# encoding

# Field kinds; _K_CF is the CommandField slot (its element is pre-encoded per class).
_K_US, _K_UI, _K_TEXT, _K_AT, _K_CF = 0, 1, 2, 3, 4
_ATTR = {tag & 0xFFFF: el.attr for tag, el in ELEMENTS.items()}  # for error messages only
_VR_NAME = {tag & 0xFFFF: el.vr.value for tag, el in ELEMENTS.items()}
#: (kind, element number, mandatory, maximum length) per field, in tag order.
_Plan = tuple[tuple[int, int, bool, int], ...]


def _make_plan(command_field: int) -> tuple[attrgetter[Any], _Plan, bytes]:
    """One ``attrgetter`` reading every field (and the class's command field) in tag order, the
    matching plan, and the pre-encoded CommandField element (no enum hashing per message)."""
    kinds = {VR.US: _K_US, VR.UI: _K_UI, VR.AE: _K_TEXT, VR.LO: _K_TEXT, VR.AT: _K_AT}
    fields = [(ELEMENTS[tag], presence is Presence.MANDATORY)
              for tag, presence in SPECS[command_field].fields]
    fields.append((ELEMENTS[_TAG_COMMAND_FIELD], True))
    fields.sort(key=lambda field: field[0].tag)
    plan = tuple((_K_CF if el.tag == _TAG_COMMAND_FIELD else kinds[el.vr], el.tag & 0xFFFF,
                  mandatory, _MAX_LEN.get(el.vr, 0)) for el, mandatory in fields)
    attrs = [el.attr or "command_field" for el, _ in fields]  # >= 3 names: always a tuple
    return attrgetter(*attrs), plan, _US_EL.pack(0, 0x0100, 2, command_field)


_PLANS: dict[type, tuple[attrgetter[Any], _Plan, bytes]] = {
    cls: _make_plan(cf) for cf, cls in MESSAGE_TYPES.items()
}


def _bad(elem: int, value: object, why: str) -> CommandEncodeError:
    return CommandEncodeError(f"{_ATTR[elem]}={value!r} {why}", tag=elem)


def encode(msg: Message, *, echo: bool = False) -> bytes:
    """Encode ``msg``'s command set (implicit VR LE, group length first, ascending tags).

    ``echo=True`` writes a UI, AE or LO value that is too long or holds a backslash as it is
    (ASCII is still required): for a response repeating what the peer's request carried, which
    the decoder accepts (a 65-character UID), rather than leaving the request unanswered.
    """
    try:
        getter, plan, cf_element = _PLANS[type(msg)]
    except KeyError:
        raise CommandEncodeError(f"not a DIMSE-C message: {type(msg).__name__}") from None
    parts: list[bytes] = []
    append = parts.append
    # strict=False: the plan and the getter are built from the same list (strict costs ~15%)
    for (kind, elem, mandatory, max_len), value in zip(plan, getter(msg), strict=False):
        if value is None:
            if mandatory:
                raise CommandEncodeError(f"mandatory {_ATTR[elem]} is missing", tag=elem)
        elif kind == _K_US:
            try:
                append(_US_EL.pack(0, elem, 2, value))
            except struct.error:
                raise _bad(elem, value, "is not a 16-bit unsigned integer") from None
        elif kind == _K_UI or kind == _K_TEXT:
            try:
                raw = value.encode("ascii")
            except (UnicodeEncodeError, AttributeError):
                raise _bad(elem, value, "is not an ASCII string") from None
            size = len(raw)
            if (size > max_len or (kind == _K_UI and 92 in raw)) and not echo:  # 92: backslash
                raise _bad(elem, value, f"is not a valid {_VR_NAME[elem]}")
            if size & 1:
                raw += b"\x00" if kind == _K_UI else b" "
                size += 1
            append(_HDR.pack(0, elem, size))
            append(raw)
        elif kind == _K_CF:
            append(cf_element)
        else:
            parts += _encode_at(_ATTR[elem], elem, value)
    body = b"".join(parts)
    return _UL_EL.pack(0, 0, 4, len(body)) + body


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


def _unknown(command_field: int, values: dict[int, memoryview]) -> UnknownCommandError:
    """The error for a command field we do not know, with what a 0x0211 answer needs."""
    def us(tag: int) -> int | None:
        raw = values.get(tag)
        return int(_U16.unpack(raw)[0]) if raw is not None and len(raw) == 2 else None

    data_set_type = us(_TAG_DATA_SET_TYPE)
    sop_class = None
    for tag in (_TAG_AFFECTED_SOP_CLASS, _TAG_REQUESTED_SOP_CLASS):
        raw = values.get(tag)
        if raw is not None:
            with contextlib.suppress(CommandDecodeError):
                sop_class = _ui(tag, raw) or None
            if sop_class is not None:
                break
    return UnknownCommandError(
        command_field, us(_TAG_MESSAGE_ID),
        has_dataset=None if data_set_type is None else data_set_type != 0x0101,
        sop_class_uid=sop_class if sop_class is None or len(sop_class) <= 64 else None)


def encode_unrecognized(command_field: int, message_id: int, sop_class_uid: str | None) -> bytes:
    """The response to a request whose command field we do not know: its command field with
    bit 15 set, Status 0x0211 "unrecognized operation" (PS3.7 Annex C), no data set."""
    elements = []
    if sop_class_uid:
        uid = sop_class_uid.encode("ascii")
        if len(uid) & 1:
            uid += b"\0"
        elements.append(_HDR.pack(0, 0x0002, len(uid)) + uid)
    elements += [_US_EL.pack(0, 0x0100, 2, (command_field | 0x8000) & 0xFFFF),
                 _US_EL.pack(0, 0x0120, 2, message_id),
                 _US_EL.pack(0, 0x0800, 2, 0x0101),
                 _US_EL.pack(0, 0x0900, 2, 0x0211)]
    body = b"".join(elements)
    return _UL_EL.pack(0, 0, 4, len(body)) + body


def _decode_exact(data: bytes | bytearray | memoryview) -> Message:
    """The general decoder: every leniency rule, every error, in one documented order."""
    values, duplicates = _split(data)
    raw_cf = values.pop(_TAG_COMMAND_FIELD, None)
    command_field = _us(_TAG_COMMAND_FIELD, raw_cf) if raw_cf is not None else None
    if command_field is None:
        raise CommandDecodeError("mandatory CommandField is missing", tag=_TAG_COMMAND_FIELD)
    spec = SPECS.get(command_field)
    if spec is None:
        raise _unknown(command_field, values)
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


# ---------------------------------------------------------------------------------------------
# the fast path: a well-formed command set, decoded in one walk in step with the plan

_D_SKIP, _D_US, _D_PRIO, _D_UI, _D_TEXT, _D_AT, _D_CF = range(7)
#: Header and the first value word at once (a US value is that word); the tag's 4 bytes read as
#: one little-endian key, ``group | element << 16``, which orders group-0000 tags like the tags.
_KEY_LEN_WORD = struct.Struct("<IIH").unpack_from
_CF_HEADER = _HDR.pack(0, 0x0100, 2)
_GROUP_LENGTH_HEADER = _HDR.pack(0, 0, 4)
_PRIORITIES = tuple(Priority(p) for p in range(3))
#: (key, kind, attr, mandatory) per element in tag order, GroupLength and CommandField included.
_FastPlan = tuple[tuple[int, int, str, bool], ...]


def _make_fast_plan(command_field: int) -> tuple[type[Message], _FastPlan, tuple[bool, ...],
                                                 dict[str, Any]]:
    """The message class, the plan, ``tail[i]``: "a mandatory element is at index i or later",
    and the keyword arguments of a message with every element absent."""
    kinds = {VR.US: _D_US, VR.UI: _D_UI, VR.AE: _D_TEXT, VR.LO: _D_TEXT, VR.AT: _D_AT}
    rows = [(_TAG_GROUP_LENGTH, _D_SKIP, "", False), (_TAG_COMMAND_FIELD, _D_CF, "", True)]
    for tag, presence in SPECS[command_field].fields:
        el = ELEMENTS[tag]
        kind = _D_PRIO if el.attr == "priority" else kinds[el.vr]
        rows.append((tag, kind, el.attr, presence is Presence.MANDATORY))
    rows.sort()
    plan = tuple(((tag & 0xFFFF) << 16 | tag >> 16, kind, attr, mandatory)
                 for tag, kind, attr, mandatory in rows)
    tail = tuple(any(row[3] for row in plan[i:]) for i in range(len(plan) + 1))
    return MESSAGE_TYPES[command_field], plan, tail, {row[2]: None for row in plan if row[2]}


_FAST_PLANS = {cf: _make_fast_plan(cf) for cf in SPECS}
#: How the fast path gives up without testing: under 10 bytes left (a truncated header, or a last
#: value shorter than 2 bytes), more elements than the plan, a non-ASCII UID. Each is cheaper to catch once than to test for at every element.
_NOT_FAST = (struct.error, IndexError, UnicodeDecodeError)


def _decode_fast(data: bytes) -> Message | None:
    """Decode a command set whose elements are all known, unique, in tag order, well formed and
    complete; for anything else None, or an exception in :data:`_NOT_FAST`, and
    :func:`_decode_exact` then handles and reports it."""
    at = data.find(_CF_HEADER)  # a guess: the walk checks it is the real CommandField element
    if at < 0 or at + 10 > len(data):
        return None
    fast = _FAST_PLANS.get(data[at + 8] | data[at + 9] << 8)
    if fast is None:
        return None
    cls, plan, tail, absent = fast
    kwargs = absent.copy()
    end, cf_start = len(data), at + 8
    offset, i = (12, 1) if data.startswith(_GROUP_LENGTH_HEADER) else (0, 0)
    while offset < end:
        key, length, word = _KEY_LEN_WORD(data, offset)  # struct.error: < 10 bytes left
        start = offset + 8
        offset = start + length
        if offset > end:
            return None
        want, kind, attr, mandatory = plan[i]  # IndexError: unexpected/duplicate/out of order
        i += 1
        while want != key:  # skip absent elements; an absent mandatory one needs the exact path
            if mandatory:
                return None
            want, kind, attr, mandatory = plan[i]
            i += 1
        if kind == _D_US:
            if length != 2:
                return None
            kwargs[attr] = word
        elif kind == _D_UI:  # UnicodeDecodeError when not ASCII
            kwargs[attr] = data[start:offset].decode("ascii").strip(" \x00")
        elif kind == _D_CF:
            if start != cf_start:  # not the element whose command field chose the plan
                return None
        elif kind == _D_PRIO:
            if length != 2:
                return None
            kwargs[attr] = _PRIORITIES[word] if word < 3 else word
        elif kind == _D_TEXT:
            kwargs[attr] = data[start:offset].decode("utf-8", "replace").strip(" \x00")
        elif kind == _D_AT:
            if length % 4:
                return None
            kwargs[attr] = _at(0, memoryview(data)[start:offset])  # cannot raise: length % 4 == 0
    return None if tail[i] else cls(**kwargs)


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Decode a command set into its message dataclass (see the module docstring for leniency)."""
    if type(data) is not bytes:
        data = bytes(data)  # command sets are small: one copy, then cheap bytes slices
    try:
        msg = _decode_fast(data)
    except _NOT_FAST:
        msg = None
    return msg if msg is not None else _decode_exact(data)
