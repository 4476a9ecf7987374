"""DICOM: colour models, grey-level mapping, frames, transfer syntaxes and pixel spacing."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut
from pydicom.sequence import Sequence

from services.ingest import FrameOutOfRange, decode_image

from .builders import dataset_bytes, make_dicom, sample_bytes, sample_dataset


def rgb(data: bytes, **kwargs: Any) -> np.ndarray:
    return np.asarray(decode_image(data, **kwargs).image).astype(int)


def first_channel(data: bytes, **kwargs: Any) -> list[int]:
    arr = rgb(data, **kwargs)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all(), "expected grey"
    return arr[..., 0].ravel().tolist()


# --- the real obstetric ultrasound -------------------------------------------------------------


def test_palette_ultrasound_decodes_to_colour() -> None:
    data = sample_bytes("examples_palette.dcm")
    ds = sample_dataset("examples_palette.dcm")
    result = decode_image(data)
    assert (result.format, result.image.mode) == ("dicom", "RGB")
    assert (result.width, result.height) == (ds.Columns, ds.Rows)
    arr = np.asarray(result.image).astype(int)
    # Colour, not a greyscale rendering of the palette indices.
    assert (arr[..., 0] != arr[..., 2]).any()
    # The colours are the palette's: 16-bit LUT entries scaled to 8 bits.
    expected = apply_color_lut(ds.pixel_array, ds).astype(float) * 255 / 65535
    assert np.abs(arr - expected).max() <= 1


def test_palette_ultrasound_spacing_comes_from_its_regions() -> None:
    ds = sample_dataset("examples_palette.dcm")
    assert "PixelSpacing" not in ds
    region = next(
        r
        for r in ds.SequenceOfUltrasoundRegions
        if r.RegionSpatialFormat == 1 and r.PhysicalUnitsXDirection == 3 and r.PhysicalUnitsYDirection == 3
    )
    expected = (region.PhysicalDeltaY * 10, region.PhysicalDeltaX * 10)  # cm -> mm, (row, col)
    spacing = decode_image(sample_bytes("examples_palette.dcm")).pixel_spacing_mm
    assert spacing == pytest.approx(expected)


def test_dicom_identifiers_are_reported() -> None:
    ds = sample_dataset("examples_palette.dcm")
    info = decode_image(sample_bytes("examples_palette.dcm")).dicom
    assert info is not None
    assert info.sop_instance_uid == ds.SOPInstanceUID
    assert info.study_instance_uid == ds.StudyInstanceUID
    assert info.series_instance_uid == ds.SeriesInstanceUID
    assert info.modality == "US"
    assert info.photometric_interpretation == "PALETTE COLOR"
    assert info.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID


def test_header_values_that_are_not_what_their_vr_allows_are_dropped_or_cut() -> None:
    """What is kept must fit its column and, for UIDs, be a UID a PACS accepts: a 65-character
    or non-numeric UID is not kept; text loses NULs and is cut to its VR's length."""
    values = np.zeros((4, 4), dtype=np.uint8)
    with warnings.catch_warnings():  # pydicom warns about each invalid value: that is the point
        warnings.simplefilter("ignore")
        data = make_dicom(values, "MONOCHROME2", SOPInstanceUID="1." * 32 + "12", StudyInstanceUID="1.2.abc",
                          SeriesInstanceUID="1.2\x003", Modality="US-WITH-A-LONG-CODE",
                          ManufacturerModelName="Voluson\x00E10")
    info = decode_image(data).dicom
    assert info is not None
    assert (info.sop_instance_uid, info.study_instance_uid, info.series_instance_uid) == (None, None, None)
    assert info.modality == "US-WITH-A-LONG-C" and info.manufacturer_model_name == "VolusonE10"
    assert info.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"  # the valid one is kept


# --- colour models -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "photometric"),
    [
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", "YBR_FULL_422"),  # JPEG baseline, subsampled chroma
        ("SC_rgb_dcmtk_+eb+cy+s2.dcm", "YBR_FULL_422"),
        ("SC_rgb_jpeg_dcmtk.dcm", "YBR_FULL"),  # JPEG baseline
        ("SC_ybr_full_422_uncompressed.dcm", "YBR_FULL_422"),  # native
        ("SC_rgb_jpeg_gdcm.dcm", "RGB"),  # JPEG lossless
        ("SC_rgb_gdcm_KY.dcm", "RGB"),  # JPEG 2000
        ("SC_rgb_jls_lossy_line.dcm", "RGB"),  # JPEG-LS near-lossless
    ],
)
def test_colour_files_match_the_rgb_reference(name: str, photometric: str) -> None:
    # All encode the same test card; SC_rgb_rle.dcm is its lossless RGB version. A missing or a
    # doubled YCbCr->RGB conversion would shift every colour far beyond this tolerance.
    reference = rgb(sample_bytes("SC_rgb_rle.dcm"))
    assert tuple(reference[0, 0]) == (255, 0, 0)
    result = decode_image(sample_bytes(name))
    assert result.dicom is not None and result.dicom.photometric_interpretation == photometric
    diff = np.abs(np.asarray(result.image).astype(int) - reference)
    assert diff.mean() < 4


def test_jpeg2000_ybr_rct_ultrasound_matches_its_uncompressed_rgb() -> None:
    # examples_rgb_color.dcm is the same scan, uncompressed RGB at half resolution.
    result = decode_image(sample_bytes("examples_jpeg2k.dcm"))
    assert result.dicom is not None and result.dicom.photometric_interpretation == "YBR_RCT"
    full = np.asarray(result.image).astype(float)
    half = full.reshape(full.shape[0] // 2, 2, full.shape[1] // 2, 2, 3).mean(axis=(1, 3))
    reference = rgb(sample_bytes("examples_rgb_color.dcm"))
    assert np.abs(half - reference).mean() < 4


def test_16_bit_rgb_is_scaled_to_8_bits() -> None:
    eight = rgb(sample_bytes("SC_rgb_rle.dcm"))
    sixteen = rgb(sample_bytes("SC_rgb_rle_16bit.dcm"))
    assert np.abs(eight - sixteen).max() <= 1


# --- grey levels -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_expb.dcm",
    ],
)
def test_lossless_encodings_give_identical_images(name: str) -> None:
    assert np.array_equal(rgb(sample_bytes(name)), rgb(sample_bytes("MR_small.dcm")))


def test_8_bit_grey_without_window_passes_through() -> None:
    values = np.array([[0, 7, 128, 255]], dtype=np.uint8)
    assert first_channel(make_dicom(values, "MONOCHROME2")) == [0, 7, 128, 255]


def test_an_identity_rescale_leaves_8_bit_grey_as_it_is() -> None:
    # slope 1 / intercept 0 changes no value (PS3.3 C.11.1): the image must not be stretched
    values = np.array([[10, 20, 30]], dtype=np.uint8)
    plain = first_channel(make_dicom(values, "MONOCHROME2"))
    assert plain == [10, 20, 30]
    assert first_channel(make_dicom(values, "MONOCHROME2", RescaleSlope=1, RescaleIntercept=0)) == plain
    # a rescale that does change values is still applied (then stretched: no window)
    assert first_channel(make_dicom(values, "MONOCHROME2", RescaleSlope=2, RescaleIntercept=0)) == [0, 128, 255]


def test_monochrome1_is_inverted() -> None:
    values = np.array([[0, 7, 128, 255]], dtype=np.uint8)
    assert first_channel(make_dicom(values, "MONOCHROME1")) == [255, 248, 127, 0]


def test_window_center_width_maps_to_8_bits() -> None:
    values = np.array([[0, 900, 1000, 1100, 4000]], dtype=np.uint16)
    data = make_dicom(values, "MONOCHROME2", bits_stored=12, WindowCenter=1000, WindowWidth=200)
    assert first_channel(data) == [0, 0, 128, 255, 255]


def test_window_applies_to_rescaled_values() -> None:
    # CT-like: stored 0..2000 with intercept -1000 gives -1000..1000 HU; window 0/400 in HU.
    values = np.array([[0, 1000, 1200, 2000]], dtype=np.uint16)
    data = make_dicom(
        values,
        "MONOCHROME2",
        bits_stored=12,
        RescaleSlope=1,
        RescaleIntercept=-1000,
        WindowCenter=0,
        WindowWidth=400,
    )
    assert first_channel(data) == [0, 128, 255, 255]


def test_voi_lut_sequence_is_applied() -> None:
    lut = Dataset()
    lut.add_new(0x00283002, "US", [256, 0, 8])  # LUT Descriptor: 256 entries from 0, 8 bits
    lut.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUT Data: a reversed ramp
    values = np.array([[0, 100, 255]], dtype=np.uint8)
    data = make_dicom(values, "MONOCHROME2", VOILUTSequence=Sequence([lut]))
    assert first_channel(data) == [255, 155, 0]


def test_deep_grey_without_window_uses_its_range() -> None:
    values = np.array([[100, 1000, 3000]], dtype=np.uint16)
    grey = first_channel(make_dicom(values, "MONOCHROME2", bits_stored=12))
    assert grey[0] == 0 and grey[-1] == 255 and 0 < grey[1] < 255


def test_signed_grey_is_supported() -> None:
    values = np.array([[-1000, 0, 3000]], dtype=np.int16)
    assert first_channel(make_dicom(values, "MONOCHROME2", bits_stored=16)) == [0, 64, 255]


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPGExtended.dcm", "CT_small.dcm", "liver_1frame.dcm"])
def test_other_grey_encodings_decode(name: str) -> None:
    ds = sample_dataset(name)
    result = decode_image(sample_bytes(name))
    assert (result.width, result.height) == (ds.Columns, ds.Rows)
    arr = np.asarray(result.image)
    assert arr.min() < arr.max()  # not a blank image


# --- frames ------------------------------------------------------------------------------------


def test_multi_frame_grey_picks_the_requested_frame() -> None:
    frames = np.stack([np.full((4, 5), 40 * (k + 1), dtype=np.uint8) for k in range(3)])
    data = make_dicom(frames, "MONOCHROME2")
    for k in range(3):
        result = decode_image(data, frame=k)
        assert (result.frame, result.frame_count) == (k, 3)
        assert set(first_channel(data, frame=k)) == {40 * (k + 1)}
    with pytest.raises(FrameOutOfRange):
        decode_image(data, frame=3)


def test_multi_frame_ultrasound_cine() -> None:
    data = sample_bytes("examples_ybr_color.dcm")  # 30-frame YBR_FULL_422 JPEG cine
    first, last = decode_image(data, frame=0), decode_image(data, frame=29)
    assert (first.frame_count, last.frame_count, last.frame) == (30, 30, 29)
    assert not np.array_equal(np.asarray(first.image), np.asarray(last.image))
    with pytest.raises(FrameOutOfRange):
        decode_image(data, frame=30)


@pytest.mark.parametrize(("number", "expected"), [(4, 3), (30, 29), (1, 0), (None, 0), (31, 0), (0, 0)])
def test_no_frame_asked_takes_the_cine_s_representative_frame(number: int | None, expected: int) -> None:
    """``frame=None`` (what STOW-RS asks): Representative Frame Number (1-based) where the cine
    names one it has, else frame 0; the result says which, and its pixels are that frame's."""
    ds = sample_dataset("examples_ybr_color.dcm")  # 30 frames
    if number is not None:
        ds.RepresentativeFrameNumber = number
    data = dataset_bytes(ds)
    chosen, asked = decode_image(data, frame=None), decode_image(data, frame=expected)
    assert (chosen.frame, chosen.frame_count) == (expected, 30)
    assert np.array_equal(np.asarray(chosen.image), np.asarray(asked.image))
    assert decode_image(data, frame=0).frame == 0  # a frame asked for is the frame analysed


def test_no_frame_asked_of_a_single_frame_image_is_its_only_frame() -> None:
    png = io.BytesIO()
    Image.new("RGB", (32, 24), "gray").save(png, format="PNG")
    for data in (sample_bytes("examples_palette.dcm"), png.getvalue()):
        assert (decode_image(data, frame=None).frame, decode_image(data, frame=None).frame_count) == (0, 1)


@pytest.mark.parametrize(("name", "frames"), [("rtdose.dcm", 15), ("SC_rgb_rle_2frame.dcm", 2)])
def test_multi_frame_counts_and_last_frame(name: str, frames: int) -> None:
    data = sample_bytes(name)
    assert decode_image(data, frame=frames - 1).frame_count == frames
    with pytest.raises(FrameOutOfRange):
        decode_image(data, frame=frames)


def test_single_frame_dicom_has_no_frame_1() -> None:
    with pytest.raises(FrameOutOfRange):
        decode_image(sample_bytes("CT_small.dcm"), frame=1)


# --- pixel spacing -----------------------------------------------------------------------------


def _region(spatial_format: int, units_x: int, units_y: int, dx: float, dy: float) -> Dataset:
    region = Dataset()
    region.RegionSpatialFormat = spatial_format
    region.RegionDataType = 1
    region.PhysicalUnitsXDirection = units_x
    region.PhysicalUnitsYDirection = units_y
    region.PhysicalDeltaX = dx
    region.PhysicalDeltaY = dy
    return region


def _us_with(*regions: Dataset, **attributes: Any) -> bytes:
    pixels = np.zeros((8, 8), dtype=np.uint8)
    return make_dicom(pixels, "MONOCHROME2", SequenceOfUltrasoundRegions=Sequence(list(regions)), **attributes)


def test_pixel_spacing_attribute_is_used_without_regions() -> None:
    assert decode_image(sample_bytes("CT_small.dcm")).pixel_spacing_mm == pytest.approx((0.661468, 0.661468))


def test_regions_take_precedence_over_pixel_spacing() -> None:
    ds = sample_dataset("examples_palette.dcm")
    ds.PixelSpacing = [9.0, 9.0]
    spacing = decode_image(dataset_bytes(ds)).pixel_spacing_mm
    assert spacing is not None and spacing[0] < 1


def test_first_2d_region_in_cm_is_preferred() -> None:
    data = _us_with(
        _region(3, 4, 3, dx=0.5, dy=0.7),  # spectral Doppler: x in seconds, not spatial
        _region(2, 3, 3, dx=0.09, dy=0.08),  # M-mode in cm, but not 2D
        _region(1, 3, 3, dx=0.02, dy=0.03),  # 2D in cm: this one
    )
    assert decode_image(data).pixel_spacing_mm == pytest.approx((0.3, 0.2))


def test_any_region_in_cm_when_none_is_2d() -> None:
    data = _us_with(_region(2, 3, 3, dx=0.09, dy=0.08))
    assert decode_image(data).pixel_spacing_mm == pytest.approx((0.8, 0.9))


def test_regions_without_cm_fall_back_to_pixel_spacing_or_none() -> None:
    uncalibrated = _region(1, 0, 0, dx=0.02, dy=0.03)
    assert decode_image(_us_with(uncalibrated)).pixel_spacing_mm is None
    with_spacing = _us_with(uncalibrated, PixelSpacing=[0.4, 0.5])
    assert decode_image(with_spacing).pixel_spacing_mm == pytest.approx((0.4, 0.5))


def test_enhanced_objects_spacing_from_functional_groups() -> None:
    measures = Dataset()
    measures.PixelSpacing = [0.25, 0.3]
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    data = make_dicom(
        np.zeros((8, 8), dtype=np.uint8), "MONOCHROME2", SharedFunctionalGroupsSequence=Sequence([shared])
    )
    assert decode_image(data).pixel_spacing_mm == pytest.approx((0.25, 0.3))


def test_no_spacing_information_gives_none() -> None:
    assert decode_image(sample_bytes("examples_rgb_color.dcm")).pixel_spacing_mm is None
