"""DICOM inputs that must be refused, each with its own typed error, before any costly decode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmwrite
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit

from services.ingest import (
    NoPixelData,
    TooManyPixels,
    UndecodableImage,
    UnsupportedDicom,
    decode_image,
)

from .builders import dataset_bytes, encode, forge_jpeg_size, make_dicom, sample_bytes, sample_dataset

# --- not an image ------------------------------------------------------------------------------


def test_image_with_pixel_data_removed() -> None:
    ds = sample_dataset("examples_palette.dcm")
    del ds.PixelData
    with pytest.raises(NoPixelData):
        decode_image(dataset_bytes(ds))


def test_structured_report_has_no_pixel_data() -> None:
    with pytest.raises(NoPixelData):
        decode_image(sample_bytes("test-SR.dcm"))


def test_float_pixel_data_is_unsupported() -> None:
    ds = sample_dataset("MR_small.dcm")
    del ds.PixelData
    ds.FloatPixelData = np.zeros(ds.Rows * ds.Columns, dtype=np.float32).tobytes()
    with pytest.raises(UnsupportedDicom):
        decode_image(dataset_bytes(ds))


# --- unsupported but valid ---------------------------------------------------------------------


def test_unsupported_photometric_interpretation() -> None:
    data = make_dicom(np.zeros((4, 4, 3), dtype=np.uint8), "RGB", PhotometricInterpretation="HSV")
    with pytest.raises(UnsupportedDicom):
        decode_image(data)


def test_transfer_syntax_without_decoder() -> None:
    ds = sample_dataset("SC_rgb_jpeg_dcmtk.dcm")
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG-2 video
    with pytest.raises(UnsupportedDicom):
        decode_image(dataset_bytes(ds))


# --- broken ------------------------------------------------------------------------------------


def test_truncated_pixel_data() -> None:
    with pytest.raises(UndecodableImage):
        decode_image(sample_bytes("MR_truncated.dcm"))


@pytest.mark.parametrize("keep", [0.003, 0.5, 0.99])
def test_truncated_ultrasound(keep: float) -> None:
    data = sample_bytes("examples_palette.dcm")
    with pytest.raises(UndecodableImage):
        decode_image(data[: int(len(data) * keep)])


def test_truncated_inside_an_element_header() -> None:
    # Cut 3 bytes into the header that follows a complete element: pydicom stops silently,
    # which must not be mistaken for an object without pixel data.
    data = sample_bytes("SC_rgb_small_odd.dcm")
    ds = sample_dataset("SC_rgb_small_odd.dcm")
    rows = ds.get_item(0x00280010)
    assert isinstance(rows, RawDataElement) and rows.value_tell is not None
    cut = rows.value_tell + rows.length + 3
    with pytest.raises(UndecodableImage):
        decode_image(data[:cut])


def test_magic_followed_by_garbage() -> None:
    with pytest.raises(UndecodableImage):
        decode_image(bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + bytes(50))


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_invalid_dimension_values() -> None:
    with pytest.raises(UndecodableImage):
        decode_image(sample_bytes("badVR.dcm"))


# --- limits, checked from headers --------------------------------------------------------------


def test_frame_larger_than_the_limit() -> None:
    data = sample_bytes("examples_palette.dcm")  # 800x350 = 280,000 pixels
    decode_image(data, max_pixels=280_000)
    with pytest.raises(TooManyPixels):
        decode_image(data, max_pixels=279_999)


def test_limit_applies_per_decoded_frame() -> None:
    # 30 frames of 320x240: only the requested frame is decoded, so only it counts.
    result = decode_image(sample_bytes("examples_ybr_color.dcm"), frame=12, max_pixels=320 * 240)
    assert result.frame_count == 30


def test_dimensions_are_checked_before_pixel_data() -> None:
    # Rows/Columns claim 60000x60000 over 27 bytes of pixel data: decoding would fail
    # (UndecodableImage), so TooManyPixels shows the header was checked first.
    ds = sample_dataset("SC_rgb_small_odd.dcm")
    ds.Rows = ds.Columns = 60000
    with pytest.raises(TooManyPixels):
        decode_image(dataset_bytes(ds), max_pixels=40_000_000)


def test_real_jpeg2000_bomb_is_refused() -> None:
    # pydicom's own test file: 1024x256 in the dataset, but its SIZ marker claims ~3.8e12 pixels.
    with pytest.raises(TooManyPixels):
        decode_image(sample_bytes("JPEG2000-embedded-sequence-delimiter.dcm"))


def _encapsulated_jpeg(jpeg: bytes, rows: int, columns: int) -> bytes:
    ds = sample_dataset("CT_small.dcm")
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    return dataset_bytes(ds)


def test_encapsulated_jpeg_decodes() -> None:
    jpeg = encode(Image.new("L", (8, 8), 90), "JPEG", quality=95)
    grey = np.asarray(decode_image(_encapsulated_jpeg(jpeg, 8, 8)).image).astype(int)
    assert np.abs(grey - 90).max() <= 2


def test_jpeg_frame_claiming_more_pixels_than_the_dataset_is_refused() -> None:
    # Rows/Columns say 8x8, the JPEG frame's SOF says 30000x30000: the decoder would allocate
    # for the latter, so the frame header is checked before decoding.
    jpeg = forge_jpeg_size(encode(Image.new("L", (8, 8), 90), "JPEG"), 30000, 30000)
    with pytest.raises(TooManyPixels):
        decode_image(_encapsulated_jpeg(jpeg, 8, 8))


def test_jpeg_frame_disagreeing_with_the_dataset_is_undecodable() -> None:
    ds = sample_dataset("SC_rgb_jpeg_dcmtk.dcm")  # 100x100 frame
    ds.Rows = ds.Columns = 10
    with pytest.raises(UndecodableImage):
        decode_image(dataset_bytes(ds))


def test_deflated_dataset_decodes() -> None:
    result = decode_image(sample_bytes("image_dfl.dcm"))
    assert (result.width, result.height) == (512, 512)


def test_deflate_bomb_is_refused_before_inflating() -> None:
    # 20 MB of zeros in a private element deflate to ~20 KB; pydicom would inflate it all at once.
    ds = sample_dataset("MR_small.dcm")
    ds.add_new(0x00090010, "LO", "FADA TEST")
    ds.add_new(0x00091010, "OB", bytes(20_000_000))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = dataset_bytes(ds)
    assert len(data) < 100_000
    with pytest.raises(TooManyPixels):
        decode_image(data, max_pixels=10_000)


def test_missing_transfer_syntax_is_inferred() -> None:
    ds = sample_dataset("MR_small.dcm")
    del ds.file_meta.TransferSyntaxUID
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    reference = decode_image(sample_bytes("MR_small.dcm"))
    assert np.array_equal(np.asarray(decode_image(buffer.getvalue()).image), np.asarray(reference.image))
