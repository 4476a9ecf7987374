"""One settings object for the whole service, read from ``FADA_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FADA_", env_file=None, extra="ignore")

    data_dir: Path = Field(Path("./var"), description="where the embedded default keeps its files")

    # The model: either a directory with a fada_model.json manifest (``fada model build-tiny``)
    # or a base (path or hub id) plus an optional adapter (path or hub id).
    model_dir: Path | None = Field(None, description="model directory with a fada_model.json manifest")
    model_base: str | None = Field(None, description="base model: local path or hub id")
    model_adapter: str | None = Field(None, description="LoRA adapter: local path or hub id")
    model_merge: bool = Field(True, description="merge the LoRA adapter into the base weights at load")
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    model_device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    profile: str = Field("fada-skd", description="bundled profile name or path to a profile JSON file")

    max_pixels: int = Field(40_000_000, ge=1, description="largest accepted image (width x height x frames)")

    # The database that holds the truth (jobs, images, results, reviews, keys, audit).
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite at {data_dir}/fada.db")
    database_echo: bool = Field(False, description="log every SQL statement (debugging only)")

    @model_validator(mode="after")
    def _default_database_url(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir}/fada.db"
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
