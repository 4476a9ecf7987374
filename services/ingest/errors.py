"""Typed refusals of an upload.

Every way decoding can refuse an input is one of these classes, so the API layer maps them to a
response with ``status`` and ``code`` without knowing about PIL, pydicom or numpy.
"""

from __future__ import annotations

from typing import ClassVar


class IngestError(Exception):
    """Base class: the input was refused. ``detail`` is a human message safe to show to the client."""

    status: ClassVar[int] = 422
    code: ClassVar[str] = "ingest_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        # Set when the input was one of several files (a batch): its 0-based position.
        self.file_index: int | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, detail={self.detail!r})"


class EmptyInput(IngestError):
    status = 422
    code = "empty_file"


class UnsupportedMediaType(IngestError):
    """The bytes are not PNG, JPEG or DICOM Part 10 (judged from content, not a file name)."""

    status = 415
    code = "unsupported_media_type"


class UndecodableImage(IngestError):
    """The format was recognised but the content is broken: truncated, corrupt or inconsistent."""

    status = 422
    code = "undecodable_image"


class TooManyPixels(IngestError):
    """The header declares more pixels than allowed; raised before any pixel data is decoded."""

    status = 422
    code = "too_many_pixels"


class NoPixelData(IngestError):
    """A valid DICOM object that carries no image (e.g. a structured report)."""

    status = 422
    code = "dicom_no_pixel_data"


class FrameOutOfRange(IngestError):
    status = 422
    code = "frame_out_of_range"


class UnsupportedDicom(IngestError):
    """A valid DICOM image this service cannot turn into RGB (photometric, bit depth, codec)."""

    status = 422
    code = "unsupported_dicom"


class UnsupportedAspectRatio(IngestError):
    """An image so elongated (e.g. 65500x1) that the model's vision processor refuses it; refused
    at upload, not after three failed tries in the worker."""

    status = 422
    code = "unsupported_aspect_ratio"
