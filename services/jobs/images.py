"""Reading a stored image back as the pipeline's input."""

from __future__ import annotations

import io

from PIL import Image as PILImage
from sqlalchemy.orm import Session

from services.ingest import DecodedImage
from shared.db.models import Image


def load_decoded(session: Session, image_id: str) -> DecodedImage:
    """The stored image (normalised RGB PNG) with what was read from the original upload:
    format, size, sha256 and pixel spacing are the ORIGINAL's, so results say what came in."""
    row = session.get(Image, image_id)
    if row is None:
        raise LookupError(f"image {image_id} not found")
    with PILImage.open(io.BytesIO(row.data)) as stored:
        pixels = stored.convert("RGB")
    spacing = (
        (row.pixel_spacing_row_mm, row.pixel_spacing_col_mm)
        if row.pixel_spacing_row_mm is not None and row.pixel_spacing_col_mm is not None
        else None
    )
    return DecodedImage(
        image=pixels,
        format=row.format.value,
        width=row.width,
        height=row.height,
        sha256=row.sha256,
        pixel_spacing_mm=spacing,
        frame=row.frame,
        frame_count=1,  # only the chosen frame is stored
    )
