"""The DICOM Part-10 File Meta group (0002), read from raw bytes. It is always Explicit VR Little
Endian (PS3.10 7.1), so plain byte parsing is enough, and nothing after it is touched: a
deflated dataset is never inflated here, whatever it claims to hold."""

from __future__ import annotations

import io
import re
import struct

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian

from .errors import UndecodableImage
from .sniff import DICOM_PREFIX, DICOM_PREFIX_OFFSET, SNIFF_BYTES

# Explicit VRs whose length field is 4 bytes after 2 reserved bytes (PS3.5 7.1.2).
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# A UID (PS3.5 9.1): digit components separated by dots, at most 64 characters. Leading zeros,
# which the standard forbids but some devices write, are tolerated.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
UID_MAX = 64

META_SCAN_BYTES = 4096  # a File Meta group is a few hundred bytes

# File Meta elements by element number
MEDIA_STORAGE_SOP_CLASS_UID, MEDIA_STORAGE_SOP_INSTANCE_UID, TRANSFER_SYNTAX_UID = 0x0002, 0x0003, 0x0010


def read_file_meta(data: bytes) -> tuple[dict[int, str], int]:
    """Return (the File Meta group's text values by element number, offset of the dataset after
    it). The group is always Explicit VR Little Endian (PS3.10 7.1), so plain byte parsing is
    enough and nothing outside group 0002 is touched: a deflated body is never inflated here.
    Raises ``UndecodableImage`` for a truncated group."""
    pos = SNIFF_BYTES
    values: dict[int, str] = {}
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_LENGTH_VRS:
            if pos + 12 > len(data):
                raise UndecodableImage("DICOM file meta information is truncated")
            (length,) = struct.unpack_from("<I", data, pos + 8)
            value_at = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            value_at = pos + 8
        if value_at + length > len(data):
            raise UndecodableImage("DICOM file meta information is truncated")
        if vr in (b"UI", b"AE", b"SH", b"CS"):
            values[element] = data[value_at : value_at + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos = value_at + length
    return values, pos


def part10_uids(data: bytes) -> tuple[str | None, str | None]:
    """(SOP Class UID, SOP Instance UID) from the File Meta group of a Part-10 file (Type 1
    there), or None for what is missing, not a valid UID, not Part-10, or damaged: a probe that
    never raises."""
    if data[DICOM_PREFIX_OFFSET:SNIFF_BYTES] != DICOM_PREFIX:
        return None, None
    try:
        meta, _ = read_file_meta(data)
    except (UndecodableImage, struct.error):
        meta = {}
    sop_class = valid_uid(meta.get(MEDIA_STORAGE_SOP_CLASS_UID))
    sop_instance = valid_uid(meta.get(MEDIA_STORAGE_SOP_INSTANCE_UID))
    if sop_instance is None and DeflatedExplicitVRLittleEndian.encode() not in data[:META_SCAN_BYTES]:
        # a File Meta group without the UIDs, or written Implicit VR: ask the dataset itself,
        # as long as no deflated body (which pydicom would inflate whole) can be behind it
        sop_class, sop_instance = _dataset_uids(data)
    return sop_class, sop_instance


def _dataset_uids(data: bytes) -> tuple[str | None, str | None]:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        return valid_uid(ds.get("SOPClassUID")), valid_uid(ds.get("SOPInstanceUID"))
    except Exception:  # a probe: whatever pydicom raises on a damaged part, the part fails later with why
        return None, None


def valid_uid(value: object) -> str | None:
    """``value`` as a UID if it is one (trailing NUL/space padding removed), else None: what
    is stored, linked to and written into an SR must be a UID a PACS accepts."""
    if value is None:
        return None
    text = str(value).rstrip("\x00 ").strip()
    return text if len(text) <= UID_MAX and _UID.fullmatch(text) else None
