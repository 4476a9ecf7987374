"""Detect the container format from leading bytes; file names and client MIME types are never trusted."""

from __future__ import annotations

from .decoded import ImageFormat

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# SOI followed by the first byte of the next marker: every JPEG (JFIF, Exif, raw) starts like this.
JPEG_SIGNATURE = b"\xff\xd8\xff"
# DICOM Part 10: a 128-byte preamble (arbitrary content), then the prefix "DICM".
DICOM_PREFIX = b"DICM"
DICOM_PREFIX_OFFSET = 128

#: How many leading bytes ``sniff_format`` needs to see to recognise every supported format.
SNIFF_BYTES = DICOM_PREFIX_OFFSET + len(DICOM_PREFIX)


def sniff_format(head: bytes) -> ImageFormat | None:
    """Return the format of a file from its first bytes (at least ``SNIFF_BYTES`` for DICOM), else None."""
    # DICOM first: its preamble is free-form and may itself start with another format's
    # signature (dual-personality files), whereas "DICM" at exactly offset 128 is decisive.
    if head[DICOM_PREFIX_OFFSET:SNIFF_BYTES] == DICOM_PREFIX:
        return "dicom"
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SIGNATURE):
        return "jpeg"
    return None
