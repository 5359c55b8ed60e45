"""Parsing of ``-k KEY=VALUE`` query keys, as DCMTK's findscu/movescu/getscu users type them.

A key is a keyword (``PatientName``), a tag (``0010,0010``, ``(0010,0010)``, ``00100010``) or a
path into sequences (``ReferencedSOPSequence[0].ReferencedSOPInstanceUID``; the index may be
omitted for the first item). ``KEY`` or ``KEY=`` asks for the attribute to be returned (an empty
value is universal matching); ``KEY=VALUE`` sets a matching value (``\\`` separates values).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

__all__ = ["KeyError_", "KeySpec", "apply_keys", "parse_key", "parse_tag"]

_TAG_RE = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")
_PART_RE = re.compile(r"^([^\[\]]+)(?:\[(\d+)\])?$")


class KeyError_(ValueError):
    """A ``-k`` specification that cannot be understood (unknown keyword, bad tag, bad path)."""


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One parsed key: the path of (tag, item index) down to the element, and its value."""

    path: tuple[tuple[BaseTag, int], ...]
    value: str | None

    @property
    def tag(self) -> BaseTag:
        return self.path[-1][0]


def parse_tag(text: str) -> BaseTag:
    """A keyword or a tag in one of the usual spellings -> a pydicom tag."""
    text = text.strip()
    m = _TAG_RE.match(text)
    if m:
        return Tag(int(m.group(1), 16), int(m.group(2), 16))
    tag = tag_for_keyword(text)
    if tag is None:
        raise KeyError_(f"unknown attribute {text!r}: use a DICOM keyword or a tag like 0010,0010")
    return Tag(tag)


def parse_key(spec: str) -> KeySpec:
    """Parse ``KEY``, ``KEY=`` or ``KEY=VALUE`` (KEY possibly a sequence path)."""
    name, sep, value = spec.partition("=")
    if not name.strip():
        raise KeyError_(f"empty key in {spec!r}")
    path: list[tuple[BaseTag, int]] = []
    for part in name.strip().split("."):
        m = _PART_RE.match(part.strip())
        if not m:
            raise KeyError_(f"bad key path component {part!r} in {spec!r}")
        path.append((parse_tag(m.group(1)), int(m.group(2) or 0)))
    for tag, _ in path[:-1]:
        if _vr(tag) != "SQ":
            raise KeyError_(f"{_name(tag)} is not a sequence, in {spec!r}")
    return KeySpec(tuple(path), value if sep else None)


def _vr(tag: BaseTag) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        if tag.is_private_creator:  # (gggg,0010-00FF), odd group: LO (PS3.5 7.8.1)
            return "LO"
        return "UN" if tag.is_private else "LO"


def _name(tag: BaseTag) -> str:
    return keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"


def apply_keys(specs: Iterable[KeySpec], ds: Dataset | None = None) -> Dataset:
    """Build (or extend) an identifier from parsed keys; later keys override earlier ones."""
    ds = Dataset() if ds is None else ds
    for spec in specs:
        target = ds
        for tag, index in spec.path[:-1]:
            if tag not in target:
                target.add_new(tag, "SQ", Sequence())
            seq = target[tag].value
            while len(seq) <= index:
                seq.append(Dataset())
            target = seq[index]
        tag = spec.tag
        vr = _vr(tag)
        if vr == "SQ":
            if spec.value:
                raise KeyError_(f"{_name(tag)} is a sequence and takes no value")
            if tag not in target:
                target.add_new(tag, "SQ", Sequence())
            continue
        raw = spec.value or ""
        value: object = raw
        if raw and vr in ("US", "SS", "UL", "SL", "UV", "SV"):
            try:
                nums = [int(v) for v in raw.split("\\")]
            except ValueError:
                raise KeyError_(f"{_name(tag)} needs integer values, got {raw!r}") from None
            value = nums if len(nums) > 1 else nums[0]
        elif raw and vr in ("FL", "FD"):
            try:
                floats = [float(v) for v in raw.split("\\")]
            except ValueError:
                raise KeyError_(f"{_name(tag)} needs numeric values, got {raw!r}") from None
            value = floats if len(floats) > 1 else floats[0]
        elif raw and vr == "UN":  # a private element we have no dictionary for: its bytes
            data = raw.encode("utf-8")
            value = data + b" " if len(data) % 2 else data
        elif raw and "\\" in raw:
            value = raw.split("\\")
        elif not raw:
            value = None
        target.add_new(tag, vr, value)
    return ds
