"""Read the size a compressed DICOM frame declares, without decoding it.

pydicom sizes its output from Rows/Columns, but the JPEG / JPEG 2000 decoders allocate whatever
the codestream's own header declares. A small file whose frame header claims 60000x60000 is a
decompression bomb that Rows/Columns checks cannot see, so the frame header is read here, with
nothing but byte parsing, and compared with the dataset before any decoder runs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Start-of-frame markers carrying the frame size: SOF0-3, 5-7, 9-11, 13-15 (ITU T.81 B.1.1.3)
# and SOF55 for JPEG-LS (ITU T.87). C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not SOFs.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
# Markers without a length field: TEM, RST0-7, SOI, EOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8, 0xD9})
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


@dataclass(frozen=True)
class FrameHeader:
    rows: int
    columns: int
    components: int


def jpeg_frame_header(stream: bytes) -> FrameHeader | None:
    """Size from the first SOF segment of a JPEG / JPEG-LS stream; None when there is none."""
    if not stream.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(stream):
        if stream[pos] != 0xFF:
            return None  # segments must be contiguous before the first scan
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", stream, pos + 2)
        if marker in _JPEG_SOF:
            if pos + 10 > len(stream) or length < 8:
                return None
            rows, columns = struct.unpack_from(">HH", stream, pos + 5)
            return FrameHeader(rows=rows, columns=columns, components=stream[pos + 9])
        if marker == 0xDA:  # start of scan before any SOF: malformed
            return None
        pos += 2 + length
    return None


def j2k_frame_header(stream: bytes) -> FrameHeader | None:
    """Size from the SIZ segment of a JPEG 2000 codestream (bare, or boxed in a JP2 file)."""
    if stream.startswith(_JP2_SIGNATURE):
        # Some writers wrap the codestream in JP2 boxes; the codestream itself still starts with SOC+SIZ.
        start = stream.find(_J2K_SOC_SIZ)
        if start < 0:
            return None
        stream = stream[start:]
    if not stream.startswith(_J2K_SOC_SIZ) or len(stream) < 4 + 38:
        return None
    # SIZ after its marker: Lsiz(2) Rsiz(2) Xsiz Ysiz XOsiz YOsiz (4 each) ... Csiz(2) (ITU T.800 A.5.1)
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", stream, 8)
    (csiz,) = struct.unpack_from(">H", stream, 4 + 36)
    if xsiz <= xosiz or ysiz <= yosiz:
        return None
    return FrameHeader(rows=ysiz - yosiz, columns=xsiz - xosiz, components=csiz)
