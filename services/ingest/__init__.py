"""Input decoding for uploads: PNG, JPEG and DICOM Part 10, recognised from content, to 8-bit RGB."""

from .decode import DEFAULT_MAX_PIXELS, decode_image
from .decoded import DecodedImage, DicomInfo, ImageFormat
from .dicom_meta import part10_uids
from .errors import (
    EmptyInput,
    FrameOutOfRange,
    IngestError,
    NoPixelData,
    TooManyPixels,
    UndecodableImage,
    UnsupportedAspectRatio,
    UnsupportedDicom,
    UnsupportedMediaType,
)
from .sniff import SNIFF_BYTES, sniff_format

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SNIFF_BYTES",
    "DecodedImage",
    "DicomInfo",
    "EmptyInput",
    "FrameOutOfRange",
    "ImageFormat",
    "IngestError",
    "NoPixelData",
    "TooManyPixels",
    "UndecodableImage",
    "UnsupportedAspectRatio",
    "UnsupportedDicom",
    "UnsupportedMediaType",
    "decode_image",
    "part10_uids",
    "sniff_format",
]
