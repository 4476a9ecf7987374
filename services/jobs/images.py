"""Reading a stored image back as the pipeline's input."""

from __future__ import annotations

import io

from PIL import Image as PILImage
from sqlalchemy.orm import Session

from services.ingest import DecodedImage
from shared.db.models import Image


class StoredImageError(Exception):
    """The stored image is missing or cannot be decoded (a job with it can never succeed)."""


def load_decoded(session: Session, image_id: str) -> DecodedImage:
    """The stored image (normalised RGB PNG) with what was read from the original upload:
    format, size, sha256 and pixel spacing are the ORIGINAL's, so results say what came in."""
    row = session.get(Image, image_id)
    if row is None:
        raise StoredImageError(f"image {image_id} not found")
    if row.data is None:
        when = row.purged_at.isoformat() if row.purged_at else "an unknown time"
        raise StoredImageError(f"image {image_id} was deleted by the retention policy at {when}: submit it again")
    try:
        with PILImage.open(io.BytesIO(row.data)) as stored:
            pixels = stored.convert("RGB")
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise StoredImageError(f"image {image_id} does not decode: {exc}") from exc
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
        frame_count=row.frame_count,
    )
