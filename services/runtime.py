"""The per-process model runtime: load once, analyse many images.

``analyze_bytes`` is the single entry point from raw upload bytes to a result document; the
CLI and the worker both call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.ingest import decode_image
from services.models.loader import ModelNotFound, ModelSource, load_model, source_from_dir
from services.pipeline.engine import Engine
from services.pipeline.profile import Profile, load_profile
from services.pipeline.runner import Mode, Pipeline
from services.pipeline.warmup import WarmUpReport, should_warm_up, warm_up
from shared.schemas.results import ResultDocument
from shared.settings import Settings


def quiet_library_logs() -> None:
    """The libraries' chatter out of a service's log: transformers' progress bars (written at
    WARNING by Celery's stdout redirect) and deprecation warnings, highdicom's INFO lines for
    every SR built. Their errors still show."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("highdicom").setLevel(logging.WARNING)


@dataclass
class Runtime:
    pipeline: Pipeline
    profile: Profile
    max_pixels: int
    warmup: WarmUpReport | None = None


def model_source(settings: Settings) -> ModelSource:
    if settings.model_dir is not None:
        return source_from_dir(Path(settings.model_dir))
    if settings.model_base:
        return ModelSource(base=settings.model_base, adapter=settings.model_adapter)
    raise ModelNotFound("no model configured: set FADA_MODEL_DIR, or FADA_MODEL_BASE (and FADA_MODEL_ADAPTER)")


def load_runtime(settings: Settings) -> Runtime:
    profile = load_profile(settings.profile)
    loaded = load_model(model_source(settings), profile_name=profile.name, profile_version=profile.version,
                        merge=settings.model_merge, dtype=settings.model_dtype, device=settings.model_device)
    engine = Engine(loaded, max_side=profile.image.max_side, decode_loop=settings.decode_loop)
    report = warm_up(engine, profile, rows=settings.decode_rows) if should_warm_up(settings.warmup, engine.device) \
        else None
    return Runtime(pipeline=Pipeline(engine, profile, loaded.provenance, max_batch=settings.decode_rows),
                   profile=profile, max_pixels=settings.max_pixels, warmup=report)


def analyze_bytes(runtime: Runtime, data: bytes, *, mode: Mode = "autonomous", frame: int = 0) -> ResultDocument:
    decoded = decode_image(data, frame=frame, max_pixels=runtime.max_pixels)
    return runtime.pipeline.analyze(decoded, mode=mode)
