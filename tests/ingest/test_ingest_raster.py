"""PNG and JPEG: orientation, pixel modes, truncation and decompression bombs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from services.ingest import FrameOutOfRange, TooManyPixels, UndecodableImage, UnsupportedAspectRatio, decode_image

from .builders import encode, forge_jpeg_size, forge_png_size, noise_rgb

RED = (255, 0, 0)


def pixels(data: bytes, **kwargs: int) -> np.ndarray:
    return np.asarray(decode_image(data, **kwargs).image).astype(int)


def test_png_round_trips_exactly() -> None:
    source = noise_rgb(width=48, height=32)
    result = decode_image(encode(source, "PNG"))
    assert (result.format, result.width, result.height) == ("png", 48, 32)
    assert np.array_equal(np.asarray(result.image), np.asarray(source))
    assert result.pixel_spacing_mm is None and result.dicom is None


def test_jpeg_decodes_close_to_source() -> None:
    source = Image.new("RGB", (64, 40), (30, 160, 90))
    result = decode_image(encode(source, "JPEG", quality=95))
    assert (result.format, result.width, result.height) == ("jpeg", 64, 40)
    assert np.abs(np.asarray(result.image).astype(int) - np.asarray(source)).max() <= 3


def _marked_jpeg(orientation: int) -> bytes:
    """A 60x30 (w x h) black image with a red 10x10 block in the stored top-left corner."""
    image = Image.new("RGB", (60, 30))
    image.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def _red_at(arr: np.ndarray, x: int, y: int) -> bool:
    r, g, b = arr[y, x]
    return bool(r > 200 and g < 60 and b < 60)


def test_exif_orientation_6_rotates_to_display() -> None:
    # Orientation 6: the stored image must be turned 90 degrees clockwise to be shown upright.
    result = decode_image(_marked_jpeg(6))
    assert (result.width, result.height) == (30, 60)
    arr = np.asarray(result.image)
    assert _red_at(arr, x=25, y=5)  # stored top-left lands top-right
    assert not _red_at(arr, x=5, y=5)


def test_exif_orientation_3_turns_upside_down() -> None:
    result = decode_image(_marked_jpeg(3))
    assert (result.width, result.height) == (60, 30)
    arr = np.asarray(result.image)
    assert _red_at(arr, x=55, y=25) and not _red_at(arr, x=5, y=5)


def test_16_bit_grayscale_png_is_scaled_to_8_bits() -> None:
    gray16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    arr = pixels(encode(Image.fromarray(gray16), "PNG"))
    assert arr.shape == (1, 4, 3)
    assert arr[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def _palette(index: int, colour: tuple[int, int, int]) -> Image.Image:
    image = Image.new("P", (4, 4), index)
    image.putpalette([0, 0, 0, *colour])
    return image


@pytest.mark.parametrize(
    ("image", "params", "expected"),
    [
        (Image.new("1", (4, 4), 1), {}, (255, 255, 255)),
        (Image.new("L", (4, 4), 77), {}, (77, 77, 77)),
        (_palette(1, (10, 20, 30)), {}, (10, 20, 30)),
        (_palette(1, (10, 20, 30)), {"transparency": 1}, (0, 0, 0)),  # transparent onto black
        (Image.new("LA", (4, 4), (200, 128)), {}, (100, 100, 100)),  # half alpha onto black
        (Image.new("RGBA", (4, 4), (200, 100, 50, 255)), {}, (200, 100, 50)),
        (Image.new("RGBA", (4, 4), (200, 100, 50, 0)), {}, (0, 0, 0)),
        (Image.new("RGB", (4, 4), (10, 20, 30)), {"transparency": (10, 20, 30)}, (0, 0, 0)),
    ],
    ids=["1", "L", "P", "P-tRNS", "LA", "RGBA-opaque", "RGBA-clear", "RGB-tRNS"],
)
def test_png_modes_become_rgb(image: Image.Image, params: dict[str, object], expected: tuple[int, int, int]) -> None:
    result = decode_image(encode(image, "PNG", **params))
    assert result.image.mode == "RGB"
    assert tuple(np.asarray(result.image)[0, 0]) == expected


def test_grayscale_and_cmyk_jpeg_become_rgb() -> None:
    gray = pixels(encode(Image.new("L", (8, 8), 100), "JPEG"))
    assert np.abs(gray - 100).max() <= 2
    red = pixels(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    assert red[..., 0].min() > 200 and red[..., 1:].max() < 60


def test_truncated_png_is_undecodable() -> None:
    data = encode(noise_rgb(), "PNG")
    with pytest.raises(UndecodableImage):
        decode_image(data[: len(data) // 2])


def test_corrupt_png_data_is_undecodable() -> None:
    data = bytearray(encode(noise_rgb(), "PNG"))
    data[data.index(b"IDAT") + 30] ^= 0xFF
    with pytest.raises(UndecodableImage):
        decode_image(bytes(data))


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_jpeg_is_undecodable(keep: float) -> None:
    data = encode(noise_rgb(), "JPEG")
    with pytest.raises(UndecodableImage):
        decode_image(data[: int(len(data) * keep)])


def test_jpeg_with_only_a_header_is_undecodable() -> None:
    with pytest.raises(UndecodableImage):
        decode_image(encode(noise_rgb(), "JPEG")[:100])


def test_truncation_tolerance_in_the_process_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Silently padding a half-uploaded scan would be worse than failing: refuse to run at all.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(encode(noise_rgb(), "PNG"))


def test_png_bomb_is_refused() -> None:
    # 25 Mpx of 1-bit zeros compress to a few KB.
    bomb = encode(Image.new("1", (5000, 5000)), "PNG")
    assert len(bomb) < 50_000
    with pytest.raises(TooManyPixels):
        decode_image(bomb, max_pixels=10_000_000)


def test_size_is_checked_from_the_header_before_decoding() -> None:
    # A 2x2 PNG whose IHDR claims 6000x6000: decoding would fail (UndecodableImage) because the
    # data is far too short, so TooManyPixels proves the refusal came from the header alone.
    forged = forge_png_size(encode(Image.new("L", (2, 2)), "PNG"), 6000, 6000)
    with pytest.raises(TooManyPixels):
        decode_image(forged, max_pixels=10_000_000)
    with pytest.raises(UndecodableImage):
        decode_image(forged, max_pixels=40_000_000)  # allowed size: the decode itself then fails


def test_jpeg_size_is_checked_from_the_header() -> None:
    forged = forge_jpeg_size(encode(noise_rgb(8, 8), "JPEG"), 5000, 5000)
    with pytest.raises(TooManyPixels):
        decode_image(forged, max_pixels=10_000_000)


@pytest.mark.parametrize("side", [10_000, 20_000])  # Pillow's warning zone, then its error zone
def test_pillow_bomb_guard_maps_to_too_many_pixels(side: int) -> None:
    forged = forge_png_size(encode(Image.new("L", (2, 2)), "PNG"), side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may escape as a mere warning
        with pytest.raises(TooManyPixels):
            decode_image(forged, max_pixels=2**40)


def test_limit_does_not_depend_on_pillow_global(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # someone disabled Pillow's guard
    forged = forge_png_size(encode(Image.new("L", (2, 2)), "PNG"), 6000, 6000)
    with pytest.raises(TooManyPixels):
        decode_image(forged, max_pixels=10_000_000)


def test_decoding_leaves_pillow_globals_alone() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    forged = forge_png_size(encode(Image.new("L", (2, 2)), "PNG"), 20_000, 20_000)
    with pytest.raises(TooManyPixels):
        decode_image(forged, max_pixels=2**40)
    decode_image(encode(noise_rgb(), "PNG"))
    assert before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)


def _apng() -> bytes:
    frames = [Image.new("RGB", (10, 10), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


def test_animated_png_frames() -> None:
    data = _apng()
    for index, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        result = decode_image(data, frame=index)
        assert (result.frame, result.frame_count) == (index, 3)
        assert tuple(np.asarray(result.image)[5, 5]) == colour
    with pytest.raises(FrameOutOfRange):
        decode_image(data, frame=3)


def test_animated_png_limit_counts_frames_decoded_to_reach_the_index() -> None:
    # Reaching frame N of an APNG decodes frames 0..N.
    data = _apng()
    decode_image(data, frame=1, max_pixels=200)
    with pytest.raises(TooManyPixels):
        decode_image(data, frame=2, max_pixels=250)


def test_single_frame_jpeg_has_no_frame_1() -> None:
    with pytest.raises(FrameOutOfRange):
        decode_image(encode(noise_rgb(), "JPEG"), frame=1)


@pytest.mark.parametrize("size", [(4001, 20), (1, 65500)])
def test_an_image_the_vision_processor_cannot_read_is_refused_at_upload(size: tuple[int, int]) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    width, height = size
    with pytest.raises(ValueError, match="aspect ratio"):  # the model's own processor: the oracle
        smart_resize(height, width, factor=32)
    with pytest.raises(UnsupportedAspectRatio, match=f"{width}x{height}") as refused:
        decode_image(encode(Image.new("L", size), "PNG"))
    assert (refused.value.status, refused.value.code) == (422, "unsupported_aspect_ratio")


def test_the_most_elongated_image_the_processor_reads_is_accepted() -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    smart_resize(20, 4000, factor=32)  # 200:1 exactly
    assert decode_image(encode(Image.new("RGB", (4000, 20)), "PNG")).width == 4000
