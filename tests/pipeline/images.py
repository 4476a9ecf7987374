"""Test images: random noise of a given size, decoded as an upload would be."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from services.ingest import DecodedImage, decode_image


def noise(width: int, height: int, seed: int) -> DecodedImage:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return decode_image(buffer.getvalue())
