"""Reading a stored image back: as the pipeline's input, or as the PNG a person looks at."""

from __future__ import annotations

import io
from datetime import datetime

from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.ingest import DecodedImage
from shared.db.models import Image, Job

from .errors import JobNotFound


class StoredImageError(Exception):
    """The stored image is missing or cannot be decoded (a job with it can never succeed)."""


class ImagePurged(Exception):
    """The retention policy deleted the image's pixels (the job's results remain)."""

    def __init__(self, job_id: str, purged_at: datetime | None) -> None:
        when = purged_at.isoformat() if purged_at else "an unknown time"
        super().__init__(f"the image of job {job_id} was deleted by the retention policy at {when}; "
                         "its results, COCO and SR remain")
        self.purged_at = purged_at


def stored_png(session: Session, job_id: str) -> bytes:
    """The job's stored image: the analysed frame's pixels as a PNG without metadata (what
    ingest kept after de-identification), in the original's size."""
    row = session.execute(select(Image.data, Image.purged_at).join(Job, Job.image_id == Image.id)
                          .where(Job.id == job_id)).first()
    if row is None:
        raise JobNotFound(job_id)
    if row.data is None:
        raise ImagePurged(job_id, row.purged_at)
    return bytes(row.data)


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
