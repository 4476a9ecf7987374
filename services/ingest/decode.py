"""Entry point: sniff the bytes, dispatch to the PNG/JPEG or DICOM decoder, describe the result."""

from __future__ import annotations

import hashlib

from .decoded import DecodedImage
from .dicom import decode_dicom
from .errors import EmptyInput, FrameOutOfRange, UnsupportedAspectRatio, UnsupportedMediaType
from .raster import decode_raster
from .sniff import SNIFF_BYTES, sniff_format

DEFAULT_MAX_PIXELS = 40_000_000
# The Qwen vision processor (smart_resize) refuses images whose long side is more than 200
# times the short one; such an upload could never be read, so it is refused here.
MAX_ASPECT_RATIO = 200


def decode_image(data: bytes, *, frame: int | None = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode a PNG, JPEG or DICOM Part 10 upload, detected from its content, into 8-bit RGB.

    ``frame`` is a 0-based index for multi-frame inputs; ``None`` takes a DICOM's representative
    frame (frame 0 of anything else), and the result says which. ``max_pixels`` bounds one decoded frame
    and is checked from the header before any pixel data is decompressed.
    Raises an ``IngestError`` subclass for every refusal.
    """
    if max_pixels < 1:
        raise ValueError("max_pixels must be positive")
    if not data:
        raise EmptyInput("the uploaded file is empty")
    fmt = sniff_format(data[:SNIFF_BYTES])
    if fmt is None:
        raise UnsupportedMediaType("the file is not a PNG, JPEG or DICOM (Part 10) image")
    if frame is not None and frame < 0:
        raise FrameOutOfRange(f"frame index must be 0 or more, got {frame}")

    digest = hashlib.sha256(data).hexdigest()
    if fmt == "dicom":
        decoded = decode_dicom(data, frame=frame, max_pixels=max_pixels)
        image, frame, frame_count = decoded.image, decoded.frame, decoded.frame_count
        spacing, info = decoded.pixel_spacing_mm, decoded.info
    else:
        frame = frame or 0
        image, frame_count = decode_raster(data, fmt, frame=frame, max_pixels=max_pixels)
        spacing, info = None, None
    if max(image.size) > MAX_ASPECT_RATIO * min(image.size):
        raise UnsupportedAspectRatio(f"the image is {image.width}x{image.height}: the model reads images whose long "
                                     f"side is at most {MAX_ASPECT_RATIO} times the short one")
    return DecodedImage(
        image=image,
        format=fmt,
        width=image.width,
        height=image.height,
        sha256=digest,
        pixel_spacing_mm=spacing,
        frame=frame,
        frame_count=frame_count,
        dicom=info,
    )
