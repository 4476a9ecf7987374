"""DICOM Part 10 decoding: header checks first, then one frame through pydicom, then 8-bit RGB."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image
from pydicom import dcmread
from pydicom import uid as dicom_uid
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder
from pydicom.pixels.utils import as_pixel_options

from .decoded import DicomInfo
from .dicom_codestream import FrameHeader, j2k_frame_header, jpeg_frame_header
from .dicom_color import frame_to_rgb8
from .dicom_deflate import check_deflated_size
from .dicom_meta import valid_uid
from .dicom_spacing import pixel_spacing_mm
from .errors import (
    FrameOutOfRange,
    IngestError,
    NoPixelData,
    TooManyPixels,
    UndecodableImage,
    UnsupportedDicom,
)

_NATIVE = frozenset(
    {
        dicom_uid.ImplicitVRLittleEndian,
        dicom_uid.ExplicitVRLittleEndian,
        dicom_uid.ExplicitVRBigEndian,
        dicom_uid.DeflatedExplicitVRLittleEndian,
    }
)
_JPEG = frozenset(
    {
        dicom_uid.JPEGBaseline8Bit,
        dicom_uid.JPEGExtended12Bit,
        dicom_uid.JPEGLossless,
        dicom_uid.JPEGLosslessSV1,
        dicom_uid.JPEGLSLossless,
        dicom_uid.JPEGLSNearLossless,
    }
)
_J2K = frozenset(
    {
        dicom_uid.JPEG2000Lossless,
        dicom_uid.JPEG2000,
        dicom_uid.HTJ2KLossless,
        dicom_uid.HTJ2KLosslessRPCL,
        dicom_uid.HTJ2K,
    }
)
# RLE output is sized by pydicom from Rows/Columns, so it needs no codestream check.
_SUPPORTED = _NATIVE | _JPEG | _J2K | {dicom_uid.RLELossless}

# A deflated dataset is bounded before inflation by what its pixel limit could need: up to
# 6 bytes per pixel (16-bit RGB, 32-bit grey) plus room for the non-pixel attributes.
_DEFLATE_BYTES_PER_PIXEL = 6
_DEFLATE_NON_PIXEL_BYTES = 16 << 20
_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class DicomFrame:
    image: Image.Image
    frame: int  # 0-based: the one asked for, or the representative one (see ``representative_frame``)
    frame_count: int
    pixel_spacing_mm: tuple[float, float] | None
    info: DicomInfo


def decode_dicom(data: bytes, *, frame: int | None, max_pixels: int) -> DicomFrame:
    """Decode frame ``frame`` (0-based) of a DICOM Part 10 file into 8-bit RGB; ``None``: the
    frame the instance itself names as representative."""
    check_deflated_size(data, max_inflated_bytes=max_pixels * _DEFLATE_BYTES_PER_PIXEL + _DEFLATE_NON_PIXEL_BYTES)
    ds = _read(data)
    try:
        return _decode_dataset(ds, size=len(data), frame=frame, max_pixels=max_pixels)
    except IngestError:
        raise
    except Exception as exc:
        # pydicom converts element values lazily, so a malformed value surfaces on first access
        # anywhere below, as NotImplementedError, ValueError, TypeError, ...
        raise UndecodableImage(f"DICOM file is damaged: {exc}") from exc


def _decode_dataset(ds: Dataset, *, size: int, frame: int | None, max_pixels: int) -> DicomFrame:
    _check_not_empty(ds)
    # Before anything reads an attribute: reading converts raw elements and loses their offsets.
    cut_short = _ends_mid_element(ds, size)
    info = _info(ds)
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedDicom("float pixel data (parametric maps) is not supported")
        if cut_short:
            # Most likely an image cut off before its pixel data: say so rather than "not an image".
            raise UndecodableImage("DICOM file is truncated before its pixel data")
        raise NoPixelData("the DICOM object has no pixel data (it is not an image)")

    rows, columns, frame_count = _geometry(ds)
    # Only the requested frame is ever decoded, so one frame is what the limit applies to.
    if rows * columns > max_pixels:
        raise TooManyPixels(f"DICOM frame is {columns}x{rows}; the limit is {max_pixels} pixels")
    if frame is None:
        frame = representative_frame(ds, frame_count)
    if not 0 <= frame < frame_count:
        raise FrameOutOfRange(f"frame {frame} requested but the DICOM object has {frame_count} frame(s)")

    transfer_syntax = _transfer_syntax(ds)
    if transfer_syntax in _JPEG or transfer_syntax in _J2K:
        _check_codestream(ds, transfer_syntax, frame, frame_count, rows, columns, max_pixels)

    try:
        arr, decoded = get_decoder(transfer_syntax).as_array(ds, index=frame, **as_pixel_options(ds))
    except Exception as exc:  # pydicom and its plugins raise ValueError, RuntimeError, KeyError, ...
        raise UndecodableImage(f"DICOM pixel data could not be decoded: {exc}") from exc

    return DicomFrame(
        image=frame_to_rgb8(arr, ds, decoded),
        frame=frame,
        frame_count=frame_count,
        pixel_spacing_mm=pixel_spacing_mm(ds, frame),
        info=info,
    )


def _read(data: bytes) -> Dataset:
    try:
        return dcmread(io.BytesIO(data))
    except Exception as exc:  # InvalidDicomError, EOFError, struct.error, ValueError, ...
        raise UndecodableImage(f"DICOM file could not be parsed: {exc}") from exc


def _check_not_empty(ds: Dataset) -> None:
    # pydicom reads leniently: when the input ends inside a sequence it drops every element.
    if not list(ds.keys()):
        raise UndecodableImage("DICOM dataset is empty: the file is truncated or damaged")


def _ends_mid_element(ds: Dataset, size: int) -> bool:
    """Whether the input stops inside the last element, which pydicom tolerates without a word.

    pydicom keeps a short last value, and silently stops when fewer than 8 bytes of the next
    element header remain. Only defined-length, top-level elements can be checked; offsets of a
    deflated dataset refer to the inflated stream, so there only the short value is detectable.
    """
    last = ds.get_item(list(ds.keys())[-1])
    if not isinstance(last, RawDataElement) or last.length == _UNDEFINED_LENGTH:
        return False
    if last.value is not None and len(last.value) < last.length:
        return True
    meta = getattr(ds, "file_meta", None)
    deflated = meta is not None and meta.get("TransferSyntaxUID") == dicom_uid.DeflatedExplicitVRLittleEndian
    return not deflated and last.value_tell is not None and last.value_tell + last.length != size


def _info(ds: Dataset) -> DicomInfo:
    """UIDs only when they are UIDs; text without NULs and cut to its VR's length (CS 16,
    LO 64): whatever a device wrote, what is kept fits its column and never fails a job."""
    def text(value: object, limit: int = 64) -> str | None:
        if value is None:
            return None
        return str(value).replace("\x00", "").strip()[:limit] or None

    meta = getattr(ds, "file_meta", None)
    return DicomInfo(
        sop_instance_uid=valid_uid(ds.get("SOPInstanceUID")),
        study_instance_uid=valid_uid(ds.get("StudyInstanceUID")),
        series_instance_uid=valid_uid(ds.get("SeriesInstanceUID")),
        modality=text(ds.get("Modality"), 16),
        photometric_interpretation=text(ds.get("PhotometricInterpretation"), 16),
        transfer_syntax_uid=valid_uid(meta.get("TransferSyntaxUID")) if meta is not None else None,
        manufacturer_model_name=text(ds.get("ManufacturerModelName")),
        sop_class_uid=valid_uid(ds.get("SOPClassUID")),
        burned_in_annotation=_yes_no(text(ds.get("BurnedInAnnotation"))),
    )


def _yes_no(value: str | None) -> str | None:
    """BurnedInAnnotation is YES or NO (CS); anything else is recorded as unknown."""
    value = (value or "").strip().upper()
    return value if value in ("YES", "NO") else None


def representative_frame(ds: Dataset, frame_count: int) -> int:
    """The 0-based frame a multi-frame instance names as its pictorial representation
    (Representative Frame Number, 0028,6010, 1-based: ultrasound cines carry it, set where the
    sonographer froze the loop), or 0 when it names none, or one it does not have."""
    try:
        number = int(ds.get("RepresentativeFrameNumber") or 0)
    except (TypeError, ValueError):  # a malformed value picks no frame; the image is still read
        return 0
    return number - 1 if 1 <= number <= frame_count else 0


def _geometry(ds: Dataset) -> tuple[int, int, int]:
    """(Rows, Columns, frame count) from the header; PixelData is not touched."""
    try:
        rows = int(ds.get("Rows") or 0)
        columns = int(ds.get("Columns") or 0)
        # Absent or 0 Number of Frames means a single frame (pydicom reads it the same way).
        frames = int(ds.get("NumberOfFrames") or 1)
    except Exception as exc:
        raise UndecodableImage(f"DICOM image dimensions could not be read: {exc}") from exc
    if rows < 1 or columns < 1 or frames < 1:
        raise UndecodableImage(f"DICOM image dimensions are invalid: {rows} rows, {columns} columns")
    return rows, columns, frames


def _transfer_syntax(ds: Dataset) -> dicom_uid.UID:
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    if not value:
        # Invalid but seen in the wild: no Transfer Syntax UID in the File Meta. pydicom already
        # worked out the (necessarily native) encoding while reading, so record it for decoding.
        implicit, little = ds.original_encoding
        if implicit is None or little is None:
            raise UndecodableImage("DICOM file has no Transfer Syntax UID")
        value = (
            dicom_uid.ImplicitVRLittleEndian
            if implicit
            else dicom_uid.ExplicitVRLittleEndian
            if little
            else dicom_uid.ExplicitVRBigEndian
        )
        ds.file_meta.TransferSyntaxUID = value
    transfer_syntax = dicom_uid.UID(str(value))
    if transfer_syntax not in _SUPPORTED:
        raise UnsupportedDicom(f"transfer syntax {transfer_syntax} ({transfer_syntax.name}) is not supported")
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as exc:
        raise UnsupportedDicom(f"no pixel data decoder for transfer syntax {transfer_syntax.name}") from exc
    if not decoder.is_available:
        raise UnsupportedDicom(f"no installed decoder for transfer syntax {transfer_syntax.name}")
    return transfer_syntax


def _check_codestream(
    ds: Dataset,
    transfer_syntax: dicom_uid.UID,
    frame: int,
    frame_count: int,
    rows: int,
    columns: int,
    max_pixels: int,
) -> None:
    """Refuse a compressed frame whose own header disagrees with Rows/Columns (see dicom_codestream)."""
    try:
        offsets = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        stream = get_frame(ds.PixelData, frame, number_of_frames=frame_count, extended_offsets=offsets)
    except Exception as exc:
        raise UndecodableImage(f"compressed DICOM frame {frame} could not be located: {exc}") from exc

    header: FrameHeader | None = jpeg_frame_header(stream) if transfer_syntax in _JPEG else j2k_frame_header(stream)
    if header is None:
        raise UndecodableImage(f"compressed DICOM frame {frame} has no readable {transfer_syntax.name} header")
    if header.rows * header.columns > max_pixels:
        raise TooManyPixels(
            f"compressed frame declares {header.columns}x{header.rows}; the limit is {max_pixels} pixels"
        )
    samples = int(ds.get("SamplesPerPixel") or 1)
    if (header.rows, header.columns, header.components) != (rows, columns, samples):
        raise UndecodableImage(
            f"compressed frame declares {header.columns}x{header.rows}x{header.components} but the "
            f"dataset says {columns}x{rows}x{samples}"
        )
