"""``fada_model.json``: a model directory's own description (paths inside it, untrained flag)."""

from __future__ import annotations

from pydantic import BaseModel

MANIFEST_NAME = "fada_model.json"


class ModelManifest(BaseModel):
    base: str
    adapter: str | None = None
    untrained: bool = False
    description: str = ""
