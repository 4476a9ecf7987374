"""Builders for the job tests."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from shared.schemas.results import ImageInfo, ModelInfo, ResultDocument


def png_bytes(color: tuple[int, int, int] = (10, 20, 30), size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def make_document(revision: str = "rev-1", **kwargs: Any) -> ResultDocument:
    return ResultDocument(
        status="succeeded",
        model=ModelInfo(
            base="tiny/base", adapter="tiny/adapter", revision=revision, profile="fada-skd", untrained=True
        ),
        image=ImageInfo(width=8, height=6, sha256="0" * 64, format="png"),
        **kwargs,
    )
