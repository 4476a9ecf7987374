"""Damaged inputs of every kind end in a decoded RGB image or a typed refusal, nothing else."""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from services.ingest import IngestError, decode_image

from .builders import sample_bytes

# Small seeds keep each example fast: one per container and codec family.
_DICOM_SEEDS = (
    "SC_rgb_small_odd.dcm",  # native RGB
    "SC_rgb_small_odd_jpeg.dcm",  # JPEG baseline, YBR_FULL
    "MR_small_RLE.dcm",  # RLE, 16-bit signed grey
    "MR_small_jp2klossless.dcm",  # JPEG 2000
    "image_dfl.dcm",  # deflated dataset
)


@functools.cache
def _seeds() -> tuple[bytes, ...]:
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    encoded = []
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        encoded.append(buffer.getvalue())
    encoded.extend(sample_bytes(name) for name in _DICOM_SEEDS)
    return tuple(encoded)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_seeds())))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "delete", "truncate", "insert"]))
        if action == "flip":
            data[position] = draw(st.integers(0, 255))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        elif action == "truncate":
            del data[position:]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def _decode_or_refuse(data: bytes, frame: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd values; only outcomes matter here
        try:
            result = decode_image(data, frame=frame, max_pixels=1_000_000)
        except IngestError as error:
            assert error.detail
            return
    assert result.image.mode == "RGB"
    assert result.image.size == (result.width, result.height)
    assert result.frame_count is not None  # a fresh decode always records it
    assert 0 <= result.frame < result.frame_count


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged(), st.sampled_from([0, 0, 1]))
def test_damaged_inputs_decode_or_raise_a_typed_error(data: bytes, frame: int) -> None:
    _decode_or_refuse(data, frame)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", bytes(128) + b"DICM"]),
    st.binary(max_size=400),
)
def test_signature_followed_by_noise(signature: bytes, tail: bytes) -> None:
    _decode_or_refuse(signature + tail, 0)
