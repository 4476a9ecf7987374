"""PNG and JPEG decoding with Pillow: header-first size limit, EXIF orientation, 8-bit RGB."""

from __future__ import annotations

import io
import logging
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import FrameOutOfRange, TooManyPixels, UndecodableImage
from .pixels import gray_to_rgb8, stretch_to_uint8

# Pillow logs every EXIF tag it parses, values included, at DEBUG: an image description or
# owner name is patient data. Never let those records exist, whatever the log level is.
logging.getLogger("PIL.TiffImagePlugin").setLevel(logging.INFO)

# Pillow's own plugin names; restricting Image.open to the sniffed format stops Pillow from
# guessing some other plugin for bytes that merely start with a PNG/JPEG signature.
_PIL_FORMATS: dict[str, list[str]] = {"png": ["PNG"], "jpeg": ["JPEG"]}

_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def decode_raster(data: bytes, fmt: Literal["png", "jpeg"], *, frame: int, max_pixels: int) -> tuple[Image.Image, int]:
    """Decode one frame of a PNG/JPEG into 8-bit RGB in display orientation; return it and the frame count."""
    _refuse_if_truncation_tolerated()
    im = _open_header(data, fmt)
    width, height = im.size
    frame_count = int(getattr(im, "n_frames", 1))  # APNG / MPO; plain files have no n_frames
    if not 0 <= frame < frame_count:
        raise FrameOutOfRange(f"frame {frame} requested but the image has {frame_count} frame(s)")
    # Reaching frame N of an APNG decodes frames 0..N, so the work grows with the index.
    if width * height * (frame + 1) > max_pixels:
        raise TooManyPixels(
            f"image is {width}x{height}" + (f", frame {frame}" if frame else "") + f"; the limit is {max_pixels} pixels"
        )
    try:
        if frame:
            im.seek(frame)
    except Exception as exc:  # Pillow plugins raise OSError, SyntaxError, ValueError, EOFError, ...
        raise UndecodableImage(f"{fmt.upper()} frame {frame} could not be read: {exc}") from exc
    if im.size[0] * im.size[1] > max_pixels:  # MPO frames are separate JPEGs, maybe larger
        raise TooManyPixels(f"frame {frame} is {im.size[0]}x{im.size[1]}; the limit is {max_pixels} pixels")
    try:
        im.load()
    except Exception as exc:
        raise UndecodableImage(f"{fmt.upper()} data could not be decoded: {exc}") from exc
    try:
        oriented = ImageOps.exif_transpose(im)
    except Exception as exc:  # a broken EXIF block: orientation unknown, so refuse rather than guess
        raise UndecodableImage(f"EXIF metadata is unreadable, orientation unknown: {exc}") from exc
    return to_rgb8(oriented), frame_count


def _refuse_if_truncation_tolerated() -> None:
    # Pillow reads this module-level flag at load time. If something in the process enabled it,
    # truncated uploads would be padded with grey and analysed as if whole; flipping it back here
    # would break whoever set it, so fail loudly: this is a deployment bug, not a bad input.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is enabled in this process; "
            "ingest refuses to decode because truncated images would be accepted silently"
        )


def _open_header(data: bytes, fmt: Literal["png", "jpeg"]) -> ImageFile.ImageFile:
    """Parse the header only (Image.open is lazy); map Pillow's own bomb guard to TooManyPixels."""
    try:
        # Pillow warns above Image.MAX_IMAGE_PIXELS and raises above twice that. The warning is
        # promoted to an error so a bomb never slips through as a log line; our own max_pixels
        # check still runs afterwards, whatever the process-wide MAX_IMAGE_PIXELS is.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=_PIL_FORMATS[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(f"image exceeds the decoder's pixel limit: {exc}") from exc
    except Exception as exc:
        raise UndecodableImage(f"{fmt.upper()} header could not be parsed: {exc}") from exc
    if not isinstance(im, ImageFile.ImageFile):  # pragma: no cover - Image.open always returns one
        raise UndecodableImage(f"{fmt.upper()} header could not be parsed")
    return im


def to_rgb8(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is flattened onto black."""
    try:
        if im.mode in _UINT16_MODES:
            # PNG 16-bit samples span the full 0..65535 display range, so scale rather than stretch.
            return gray_to_rgb8(np.asarray(im), max_value=65535)
        if im.mode in ("I", "F"):
            # 32-bit int / float have no display range of their own: stretch what is there.
            return gray_to_rgb8(stretch_to_uint8(np.asarray(im)), max_value=255)
        if im.mode in _ALPHA_MODES or "transparency" in im.info:
            rgba = im.convert("RGBA")  # also resolves tRNS transparency of P, L and RGB images
            flat = Image.new("RGB", rgba.size, (0, 0, 0))
            flat.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
            return flat
        if im.mode == "RGB":
            return im
        return im.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV
    except Exception as exc:
        raise UndecodableImage(f"pixel mode {im.mode!r} could not be converted to RGB: {exc}") from exc
