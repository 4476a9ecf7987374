"""The tiny model builder and the loader: real transformers + peft code paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from services.models.loader import (
    LoadedModel,
    ModelNotFound,
    ModelSource,
    load_model,
    revision_of,
    source_from_dir,
)
from services.models.manifest import MANIFEST_NAME
from services.models.tiny import build_tiny_model


def _inputs(loaded: LoadedModel, image: Image.Image) -> dict[str, Any]:
    proc = loaded.processor
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Classify this view."}]}]
    text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(proc(text=[text], images=[image], return_tensors="pt"))


def _logits(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).logits[0, -1].float()


def test_tiny_model_has_both_attention_kinds_and_untrained_manifest(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "base" / "config.json").read_text())
    assert config["model_type"] == "qwen3_5"
    layer_types = set(config["text_config"]["layer_types"])
    assert layer_types == {"linear_attention", "full_attention"}
    manifest = json.loads((tiny_model_dir / MANIFEST_NAME).read_text())
    assert manifest["untrained"] is True
    assert source_from_dir(tiny_model_dir).untrained is True


def test_tokenizer_covers_labels_and_chat_template_has_thinking_off(loaded_tiny: LoadedModel) -> None:
    tok = loaded_tiny.processor.tokenizer
    for text in ['{"label":"BPD_PLANE"}', '[{"bbox_2d":[0,12,999,1000],"label":"pubic_symphysis"}]']:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    rendered = loaded_tiny.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>" in rendered


def test_build_is_deterministic_for_a_seed(tmp_path: Path, tiny_model_dir: Path) -> None:
    build_tiny_model(tmp_path / "again", seed=0)
    build_tiny_model(tmp_path / "other", seed=1)
    same = (tmp_path / "again" / "base" / "model.safetensors").read_bytes()
    assert same == (tiny_model_dir / "base" / "model.safetensors").read_bytes()
    assert (tmp_path / "again" / "adapter" / "adapter_model.safetensors").read_bytes() == (
        tiny_model_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert (tmp_path / "other" / "base" / "model.safetensors").read_bytes() != same


def test_lora_changes_logits_and_merged_equals_unmerged(tiny_model_dir: Path) -> None:
    image = Image.new("RGB", (96, 64), (120, 40, 200))
    src = source_from_dir(tiny_model_dir)
    merged = load_model(src, profile_name="p", profile_version="1", merge=True)
    unmerged = load_model(src, profile_name="p", profile_version="1", merge=False)
    base_only = load_model(ModelSource(base=src.base), profile_name="p", profile_version="1")
    inputs = _inputs(merged, image)
    with_merged, with_unmerged, without = (_logits(m.model, inputs) for m in (merged, unmerged, base_only))
    assert (with_merged - without).abs().max() > 1e-3, "the adapter must change the logits"
    torch.testing.assert_close(with_merged, with_unmerged, atol=1e-4, rtol=1e-4)
    assert merged.provenance.merged and not unmerged.provenance.merged
    assert merged.provenance.revision == unmerged.provenance.revision != base_only.provenance.revision
    assert merged.provenance.untrained and not base_only.provenance.untrained


def test_revision_changes_when_weights_change(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    before = revision_of(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"x" * 11)
    assert revision_of(tmp_path) != before


def test_missing_weights_name_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match=str(tmp_path / "nowhere")):
        load_model(ModelSource(base=str(tmp_path / "nowhere")), profile_name="p", profile_version="1")
    with pytest.raises(ModelNotFound, match="LoRA adapter not found"):
        src = ModelSource(base=str(tmp_path / "nowhere"), adapter=str(tmp_path / "no-adapter"))
        # The base is checked first, so make it exist to reach the adapter.
        build_tiny_model(tmp_path / "m", seed=3)
        load_model(ModelSource(base=str(tmp_path / "m" / "base"), adapter=src.adapter),
                   profile_name="p", profile_version="1")
    # A hub id with no network: the error names both the local path and the hub id tried.
    with pytest.raises(ModelNotFound, match=r"hub id no-such-org/no-such-model"):
        load_model(ModelSource(base="no-such-org/no-such-model"), profile_name="p", profile_version="1")
