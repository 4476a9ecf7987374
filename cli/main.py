"""``fada``: the command line, a thin layer over services."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="FADA Serve: fetal-ultrasound AI as a service.")
model_app = typer.Typer(no_args_is_help=True, help="Model utilities.")
app.add_typer(model_app, name="model")


def _quiet_transformers() -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@model_app.command("build-tiny")
def build_tiny(
    out: Annotated[Path, typer.Option(help="directory to write the model to")],
    seed: Annotated[int, typer.Option(help="random seed (same seed, same model)")] = 0,
) -> None:
    """Build a tiny random qwen3_5 model + LoRA adapter (untrained; for tests and demos)."""
    _quiet_transformers()
    from services.models.tiny import build_tiny_model

    build_tiny_model(out, seed=seed)
    typer.echo(str(out))


@app.command()
def analyze(
    image: Annotated[Path, typer.Argument(help="PNG, JPEG or DICOM file", exists=True, dir_okay=False)],
    model: Annotated[Path | None, typer.Option(help="model directory (fada model build-tiny)")] = None,
    base: Annotated[str | None, typer.Option(help="base model path or hub id")] = None,
    adapter: Annotated[str | None, typer.Option(help="LoRA adapter path or hub id")] = None,
    mode: Annotated[str, typer.Option(help="autonomous or hitl")] = "autonomous",
    profile: Annotated[str | None, typer.Option(help="profile name or JSON file")] = None,
    frame: Annotated[int, typer.Option(help="DICOM frame index (0-based)")] = 0,
) -> None:
    """Run the pipeline on one image and print the result document as JSON."""
    _quiet_transformers()
    from services.ingest import IngestError
    from services.models.loader import ModelNotFound
    from services.runtime import analyze_bytes, load_runtime
    from shared.settings import Settings

    if mode not in ("autonomous", "hitl"):
        raise typer.BadParameter("mode must be autonomous or hitl", param_hint="--mode")
    overrides = {k: v for k, v in {"model_dir": model, "model_base": base, "model_adapter": adapter,
                                   "profile": profile}.items() if v is not None}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    try:
        runtime = load_runtime(settings)
        result = analyze_bytes(runtime, image.read_bytes(), mode=mode, frame=frame)  # type: ignore[arg-type]
    except IngestError as exc:
        typer.echo(f"error ({exc.code}): {exc.detail}", err=True)
        raise typer.Exit(2) from exc
    except ModelNotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    sys.stdout.write(result.model_dump_json(indent=2) + "\n")


if __name__ == "__main__":
    app()
