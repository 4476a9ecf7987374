"""Format sniffing, the error taxonomy and the contract shared by every input kind."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from services.ingest import (
    SNIFF_BYTES,
    DecodedImage,
    EmptyInput,
    FrameOutOfRange,
    IngestError,
    NoPixelData,
    TooManyPixels,
    UndecodableImage,
    UnsupportedDicom,
    UnsupportedMediaType,
    decode_image,
    sniff_format,
)

from .builders import encode, noise_rgb, sample_bytes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (EmptyInput, 422, "empty_file"),
        (UnsupportedMediaType, 415, "unsupported_media_type"),
        (UndecodableImage, 422, "undecodable_image"),
        (TooManyPixels, 422, "too_many_pixels"),
        (NoPixelData, 422, "dicom_no_pixel_data"),
        (FrameOutOfRange, 422, "frame_out_of_range"),
        (UnsupportedDicom, 422, "unsupported_dicom"),
    ],
)
def test_error_taxonomy(error: type[IngestError], status: int, code: str) -> None:
    assert issubclass(error, IngestError)
    assert (error.status, error.code) == (status, code)
    raised = error("a human message")
    assert raised.detail == "a human message"
    assert str(raised) == "a human message"


def test_error_codes_are_unique() -> None:
    codes = [cls.code for cls in IngestError.__subclasses__()]
    assert len(codes) == len(set(codes))


def test_sniff_each_format() -> None:
    assert sniff_format(encode(noise_rgb(), "PNG")) == "png"
    assert sniff_format(encode(noise_rgb(), "JPEG")) == "jpeg"
    assert sniff_format(sample_bytes("CT_small.dcm")[:SNIFF_BYTES]) == "dicom"


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"hello, this is a text file\n",
        b"%PDF-1.7\n",
        b"GIF89a" + bytes(200),
        b"\x00" * 128 + b"DICX",
        b"\x00" * 127 + b"DICM",  # prefix one byte early: not Part 10
        PNG_MAGIC[:7],
        b"\xff\xd8",  # SOI alone is not enough
    ],
)
def test_sniff_rejects_other_content(head: bytes) -> None:
    assert sniff_format(head) is None


def test_sniff_dicom_preamble_may_look_like_another_format() -> None:
    # The 128-byte preamble is free-form (dual-personality files put a TIFF/PNG header there).
    head = PNG_MAGIC + bytes(120) + b"DICM"
    assert sniff_format(head) == "dicom"


@given(st.binary(max_size=300))
def test_sniff_only_answers_from_signatures(head: bytes) -> None:
    result = sniff_format(head)
    if head[128:132] == b"DICM":
        assert result == "dicom"
    elif head.startswith(PNG_MAGIC):
        assert result == "png"
    elif head.startswith(b"\xff\xd8\xff"):
        assert result == "jpeg"
    else:
        assert result is None


def test_empty_input() -> None:
    with pytest.raises(EmptyInput) as info:
        decode_image(b"")
    assert info.value.status == 422


def test_text_file_is_unsupported_media_type() -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        decode_image(b"Patient: Jane Doe\nGA: 22 weeks\n" * 10)
    assert info.value.status == 415


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
def test_formats_pillow_could_read_are_still_refused(fmt: str) -> None:
    # Only PNG/JPEG/DICOM are accepted, even though Pillow would happily decode these.
    with pytest.raises(UnsupportedMediaType):
        decode_image(encode(noise_rgb(), fmt))


def test_dicom_without_part10_header_is_unsupported() -> None:
    # A bare dataset (no preamble/"DICM") cannot be recognised from content reliably.
    with pytest.raises(UnsupportedMediaType):
        decode_image(sample_bytes("no_meta.dcm"))


@pytest.mark.parametrize("name", ["png", "jpeg", "dicom"])
def test_common_contract(name: str) -> None:
    data = {
        "png": encode(noise_rgb(), "PNG"),
        "jpeg": encode(noise_rgb(), "JPEG"),
        "dicom": sample_bytes("CT_small.dcm"),
    }[name]
    result = decode_image(data)
    assert isinstance(result, DecodedImage)
    assert result.format == name
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.image.mode == "RGB"
    assert (result.width, result.height) == result.image.size
    assert np.asarray(result.image).dtype == np.uint8
    assert (result.frame, result.frame_count) == (0, 1)
    assert (result.dicom is not None) == (name == "dicom")


def test_negative_frame_is_out_of_range() -> None:
    with pytest.raises(FrameOutOfRange):
        decode_image(encode(noise_rgb(), "PNG"), frame=-1)


def test_max_pixels_is_inclusive() -> None:
    data = encode(Image.new("RGB", (40, 25)), "PNG")
    assert decode_image(data, max_pixels=1000).width == 40
    with pytest.raises(TooManyPixels):
        decode_image(data, max_pixels=999)


def test_invalid_max_pixels_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        decode_image(encode(noise_rgb(), "PNG"), max_pixels=0)
