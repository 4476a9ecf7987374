"""Bound the inflated size of a Deflated Explicit VR Little Endian dataset before pydicom reads it.

pydicom inflates such a dataset in one ``zlib.decompress`` call, with no limit, so a few MB of
upload could inflate to many GB before Rows/Columns can even be read. The transfer syntax is
therefore read here from the raw File Meta group, and a deflated body is inflated in bounded
chunks (output discarded) to measure it first.
"""

from __future__ import annotations

import struct
import zlib

from .errors import TooManyPixels, UndecodableImage
from .sniff import SNIFF_BYTES

DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
# Explicit VRs whose length field is 4 bytes after 2 reserved bytes (PS3.5 7.1.2).
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_CHUNK = 1 << 20


def read_transfer_syntax(data: bytes) -> tuple[str | None, int]:
    """Return (Transfer Syntax UID or None, offset of the dataset after the File Meta group).

    The File Meta group is always Explicit VR Little Endian (PS3.10 7.1), so plain byte parsing
    is enough and nothing outside group 0002 is touched.
    """
    pos = SNIFF_BYTES
    transfer_syntax: str | None = None
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
        if element == 0x0010:
            transfer_syntax = data[value_at : value_at + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos = value_at + length
    return transfer_syntax, pos


def check_deflated_size(data: bytes, *, max_inflated_bytes: int) -> None:
    """Raise TooManyPixels if a deflated dataset inflates beyond ``max_inflated_bytes``; else no-op."""
    transfer_syntax, body_at = read_transfer_syntax(data)
    if transfer_syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, no zlib header (PS3.5 A.5)
    pending = data[body_at:]
    total = 0
    try:
        while True:
            out = inflater.decompress(pending, _CHUNK)
            total += len(out)
            if total > max_inflated_bytes:
                raise TooManyPixels(
                    f"deflated DICOM dataset inflates beyond {max_inflated_bytes} bytes, "
                    "more than the pixel limit allows"
                )
            pending = inflater.unconsumed_tail
            if not out:  # input consumed and nothing buffered: fully measured
                return
    except zlib.error as exc:
        raise UndecodableImage(f"deflated DICOM dataset is corrupt: {exc}") from exc
