"""Load a base model plus an optional LoRA adapter, with a provenance record.

A source is a local directory or a hub id. Nothing falls back silently: a source that cannot
be found raises ``ModelNotFound`` naming every place that was looked at.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2VLImageProcessorPil

from services.models.manifest import MANIFEST_NAME, ModelManifest
from services.models.processor import ImageOnlyQwen3VLProcessor

# Files whose identity defines a model's revision: configs, tokenizer and weights (or their
# index, which already names every shard).
_REVISION_GLOBS = ("*.json", "*.jinja", "*.safetensors", "*.bin", "*.model")


class ModelNotFound(RuntimeError):
    """A configured base model or adapter could not be found."""


class Provenance(BaseModel):
    base: str
    adapter: str | None
    revision: str
    profile: str
    profile_version: str
    untrained: bool
    merged: bool
    dtype: str
    device: str


@dataclass(frozen=True)
class ModelSource:
    base: str
    adapter: str | None = None
    untrained: bool = False


@dataclass
class LoadedModel:
    model: Any  # Qwen3_5ForConditionalGeneration, or a peft PeftModel when not merged
    processor: ImageOnlyQwen3VLProcessor
    provenance: Provenance

    @property
    def core(self) -> Any:
        """The transformers model under any peft wrapper (holds ``model.rope_deltas``)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model


def source_from_dir(model_dir: Path) -> ModelSource:
    """A model directory with a ``fada_model.json`` manifest (e.g. from ``fada model build-tiny``)."""
    manifest_path = model_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        # A plain transformers model directory: the base alone.
        return ModelSource(base=str(model_dir))
    manifest = ModelManifest.model_validate_json(manifest_path.read_text(encoding="utf-8"))
    adapter = str(model_dir / manifest.adapter) if manifest.adapter else None
    return ModelSource(base=str(model_dir / manifest.base), adapter=adapter, untrained=manifest.untrained)


def _resolve(ref: str, what: str, required_file: str) -> Path:
    """A local directory holding ``required_file``, or a hub snapshot of that id."""
    path = Path(ref).expanduser()
    if (path / required_file).is_file():
        return path
    looked = [f"local directory {path} (no {required_file})"]
    if not path.is_absolute() and ref.count("/") == 1 and not ref.startswith("."):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(ref))
        except Exception as exc:  # network, auth or missing repo: all mean "not found here"
            looked.append(f"hub id {ref} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    raise ModelNotFound(f"{what} not found: looked for " + "; ".join(looked))


def revision_of(*dirs: Path) -> str:
    """Hash of the names, sizes and mtimes of a model's config and weight files."""
    digest = hashlib.sha256()
    for root in dirs:
        files = sorted({p for pattern in _REVISION_GLOBS for p in root.glob(pattern) if p.is_file()})
        for p in files:
            stat = p.stat()
            digest.update(f"{p.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_processor(base_dir: Path) -> ImageOnlyQwen3VLProcessor:
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    # The PIL backend needs no torchvision and preprocesses identically on every host.
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(base_dir)
    template_file = base_dir / "chat_template.jinja"
    template = template_file.read_text(encoding="utf-8") if template_file.is_file() else None
    if template is None and (base_dir / "chat_template.json").is_file():
        template = json.loads((base_dir / "chat_template.json").read_text())["chat_template"]
    return ImageOnlyQwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     chat_template=template or getattr(tokenizer, "chat_template", None))


def load_model(source: ModelSource, *, profile_name: str, profile_version: str, merge: bool = True,
               dtype: str = "auto", device: str = "auto") -> LoadedModel:
    base_dir = _resolve(source.base, "base model", "config.json")
    adapter_dir = _resolve(source.adapter, "LoRA adapter", "adapter_config.json") if source.adapter else None
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)

    model: Any = AutoModelForImageTextToText.from_pretrained(base_dir, dtype=torch_dtype)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
        if merge:
            model = model.merge_and_unload()
    model = model.to(device).eval()

    provenance = Provenance(
        base=source.base, adapter=source.adapter,
        revision=revision_of(base_dir, *([adapter_dir] if adapter_dir else [])),
        profile=profile_name, profile_version=profile_version, untrained=source.untrained,
        merged=bool(adapter_dir) and merge, dtype=str(torch_dtype).removeprefix("torch."), device=device,
    )
    return LoadedModel(model=model, processor=load_processor(base_dir), provenance=provenance)
