"""Small numpy helpers shared by the PNG/JPEG and DICOM paths to reach 8-bit RGB."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image


def scale_to_uint8(arr: NDArray[np.generic], max_value: int) -> NDArray[np.uint8]:
    """Map 0..max_value linearly onto 0..255 (values outside are clipped)."""
    if max_value == 255 and arr.dtype == np.uint8:
        return arr  # type: ignore[return-value]
    if max_value <= 0:
        raise ValueError("max_value must be positive")
    if np.issubdtype(arr.dtype, np.integer):
        # Integer arithmetic: exact, and 4 bytes per sample instead of 8 for float64.
        wide = np.clip(arr, 0, max_value).astype(np.uint32 if max_value < 2**24 else np.uint64)
        return ((wide * 255 + max_value // 2) // max_value).astype(np.uint8)
    scaled = np.clip(np.asarray(arr, dtype=np.float32), 0, max_value) * (255.0 / max_value)
    return np.rint(scaled).astype(np.uint8)


def stretch_to_uint8(arr: NDArray[np.generic]) -> NDArray[np.uint8]:
    """Map the array's own min..max onto 0..255; a constant image becomes black."""
    values = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    low = float(values[finite].min())
    high = float(values[finite].max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    if not finite.all():
        values = np.where(finite, values, low)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def gray_to_rgb8(arr: NDArray[np.generic], max_value: int) -> Image.Image:
    """A 2-D grayscale array with samples in 0..max_value, as an 8-bit RGB image."""
    gray = np.ascontiguousarray(scale_to_uint8(arr, max_value))
    return Image.fromarray(gray).convert("RGB")


def rgb_to_image(arr: NDArray[np.generic], max_value: int) -> Image.Image:
    """An (H, W, 3) array with samples in 0..max_value, as an 8-bit RGB image."""
    rgb = np.ascontiguousarray(scale_to_uint8(arr, max_value))
    return Image.fromarray(rgb)
