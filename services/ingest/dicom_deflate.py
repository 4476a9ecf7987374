"""Bound the inflated size of a Deflated Explicit VR Little Endian dataset before pydicom reads it.

pydicom inflates such a dataset in one ``zlib.decompress`` call, with no limit, so a few MB of
upload could inflate to many GB before Rows/Columns can even be read. The transfer syntax is
therefore read here from the raw File Meta group, and a deflated body is inflated in bounded
chunks (output discarded) to measure it first.
"""

from __future__ import annotations

import zlib

from pydicom.uid import DeflatedExplicitVRLittleEndian

from .dicom_meta import TRANSFER_SYNTAX_UID, read_file_meta
from .errors import TooManyPixels, UndecodableImage

_CHUNK = 1 << 20


def read_transfer_syntax(data: bytes) -> tuple[str | None, int]:
    """Return (Transfer Syntax UID or None, offset of the dataset after the File Meta group)."""
    values, body_at = read_file_meta(data)
    return values.get(TRANSFER_SYNTAX_UID), body_at


def check_deflated_size(data: bytes, *, max_inflated_bytes: int) -> None:
    """Raise TooManyPixels if a deflated dataset inflates beyond ``max_inflated_bytes``; else no-op."""
    transfer_syntax, body_at = read_transfer_syntax(data)
    if transfer_syntax != DeflatedExplicitVRLittleEndian:
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
