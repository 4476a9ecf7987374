"""Randomly initialised models of a named shape, built in memory: for throughput benchmarks.

Decode speed and memory depend on a model's shape, not on its weights, so the GPU benchmark
builds the FADA-SKD base shape (Qwen3.5-4B, ``configs/qwen3_5_4b_shape.json``) with random
weights instead of fetching 9 GB of checkpoints, which a benchmark host may not be able to do.
The real service merges its LoRA adapter at load time, so the base shape is exactly what runs.

The tokenizer and processor are the tiny ones from ``services.models.tiny`` (a trained
tokenizer with 248,320 entries cannot be built locally). Only the model's vocabulary is full
size: the lm_head, the embedding and the logits keep the real cost, the tokenizer's special
token ids are written into the config so the image tokens are found, and ids the tokenizer
does not know decode to nothing (``tokenizer.decode`` skips them), so random output never
crashes decoding.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, Qwen2VLImageProcessorPil, Qwen3_5Config

from services.models.loader import LoadedModel, Provenance
from services.models.processor import ImageOnlyQwen3VLProcessor
from services.models.tiny import CHAT_TEMPLATE, build_tokenizer, tiny_config
from services.pipeline.profile import Profile, load_profile

CONFIGS_DIR = Path(__file__).parent / "configs"
# name -> JSON file under CONFIGS_DIR; "tiny" is computed (services.models.tiny.tiny_config).
SHAPE_FILES = {"qwen3_5-4b": "qwen3_5_4b_shape.json"}
SHAPES = ("tiny", *SHAPE_FILES)

# Ids in the shape files belong to the real Qwen tokenizer; these keys are replaced with the
# ids of the tokenizer the benchmark actually uses.
_TOKEN_KEYS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
               "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}


def load_shape_json(shape: str) -> dict[str, Any]:
    """The raw config of a named shape (or of a path to a config.json), as stored."""
    path = CONFIGS_DIR / SHAPE_FILES[shape] if shape in SHAPE_FILES else Path(shape)
    if not path.is_file():
        raise ValueError(f"unknown model shape {shape!r}: use one of {list(SHAPES)} or a config.json path")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def shape_config(shape: str, tokenizer: Any) -> Qwen3_5Config:
    """The model config of ``shape`` with ``tokenizer``'s special-token ids written in."""
    if shape == "tiny":
        return tiny_config(tokenizer)
    data = load_shape_json(shape)
    vocab = tokenizer.get_vocab()
    text = dict(data["text_config"])
    if len(tokenizer) > text["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} entries, more than the model's {text['vocab_size']}")
    for key, token in _TOKEN_KEYS.items():
        data[key] = vocab[token]
    text.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    data["text_config"] = text
    fields = {k: v for k, v in data.items() if k not in ("architectures", "model_type")}
    return Qwen3_5Config(**fields)


def build_processor(tokenizer: Any) -> ImageOnlyQwen3VLProcessor:
    """The tiny model's processor: images keep their size (the pipeline resizes them first)."""
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, temporal_patch_size=2, merge_size=2,
        size={"shortest_edge": 32 * 32, "longest_edge": 2048 * 2048},
    )
    return ImageOnlyQwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     chat_template=CHAT_TEMPLATE)


def build_random_model(config: Qwen3_5Config, *, device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """Construct the model directly on ``device`` in ``dtype``.

    Building on the target device matters for the 4B shape: materialising 4.5 B fp32
    parameters on the CPU first and initialising them there takes minutes and 18 GB of host
    memory; on a GPU the same random init takes about a second.
    """
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    text: Any = config.text_config  # a Qwen3_5TextConfig once the config is built
    model.generation_config.eos_token_id = text.eos_token_id
    model.generation_config.pad_token_id = text.pad_token_id
    return model


@dataclass(frozen=True)
class BuiltModel:
    loaded: LoadedModel
    shape: str
    build_s: float  # wall time of tokenizer + processor + model construction


def build_shape_model(shape: str, *, device: str, dtype: torch.dtype, seed: int = 0,
                      profile: Profile | None = None) -> BuiltModel:
    """A random ``shape`` model with the tiny tokenizer and processor, ready for ``Engine``."""
    started = time.perf_counter()
    profile = profile or load_profile()
    tokenizer = build_tokenizer(profile)
    processor = build_processor(tokenizer)
    config = shape_config(shape, tokenizer)
    model = build_random_model(config, device=device, dtype=dtype, seed=seed)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    provenance = Provenance(
        base=f"random:{shape}", adapter=None, revision=f"seed-{seed}", profile=profile.name,
        profile_version=profile.version, untrained=True, merged=False,
        dtype=str(dtype).removeprefix("torch."), device=device,
    )
    loaded = LoadedModel(model=model, processor=processor, provenance=provenance)
    return BuiltModel(loaded=loaded, shape=shape, build_s=time.perf_counter() - started)


# -- memory model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryModel:
    """Bytes a model of this shape needs on the device, from its config alone.

    ``kv_bytes_per_token``: keys and values of every full-attention layer for one token of
    one sequence. ``linear_state_bytes``: the Gated-DeltaNet recurrent state (kept in fp32 by
    both the PyTorch fallback and the fla kernels) plus the short conv state, per sequence and
    independent of its length. ``logits_bytes``: one row of fp32 logits (the sampler's copy).
    """

    params: int
    vision_params: int
    weight_bytes: int
    kv_bytes_per_token: int
    linear_state_bytes: int
    logits_bytes: int
    full_layers: int
    linear_layers: int

    def sequence_bytes(self, tokens: int) -> int:
        """Cache of one sequence of ``tokens`` tokens (prefix included)."""
        return self.kv_bytes_per_token * tokens + self.linear_state_bytes

    def worker_bytes(self, batch: int, *, prefix_tokens: int, max_tokens: int, images: int | None = None) -> int:
        """Weights plus the caches of one round: ``images`` prefixes kept for their phases,
        ``batch`` requests decoding from copies of them up to ``max_tokens`` each, and two
        rows of logits per request. Activations of the prefill and the vision tower are
        transient and not counted here (see docs/PERFORMANCE.md)."""
        images = batch if images is None else images
        return (self.weight_bytes + images * self.sequence_bytes(prefix_tokens)
                + batch * (self.sequence_bytes(max_tokens) + 2 * self.logits_bytes))


def memory_model(config: Qwen3_5Config, *, weight_dtype_bytes: int = 2, state_dtype_bytes: int = 4) -> MemoryModel:
    """Count parameters on the meta device (no memory, about a second) and size the caches."""
    with torch.device("meta"):  # a copy: from_config writes the dtype into the config it gets
        model = AutoModelForImageTextToText.from_config(copy.deepcopy(config))
    params = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    vision_params = sum(p.numel() for p in model.model.visual.parameters())
    text: Any = config.text_config  # a Qwen3_5TextConfig once the config is built
    full = sum(t == "full_attention" for t in text.layer_types)
    linear = sum(t == "linear_attention" for t in text.layer_types)
    kv = full * 2 * text.num_key_value_heads * text.head_dim * weight_dtype_bytes
    recurrent = text.linear_num_value_heads * text.linear_key_head_dim * text.linear_value_head_dim
    conv_dim = 2 * text.linear_num_key_heads * text.linear_key_head_dim + \
        text.linear_num_value_heads * text.linear_value_head_dim
    state = linear * (recurrent * state_dtype_bytes + conv_dim * text.linear_conv_kernel_dim * weight_dtype_bytes)
    return MemoryModel(params=params, vision_params=vision_params, weight_bytes=params * weight_dtype_bytes,
                       kv_bytes_per_token=kv, linear_state_bytes=state, logits_bytes=text.vocab_size * 4,
                       full_layers=full, linear_layers=linear)


def image_tokens(width: int, height: int, *, patch: int = 16, merge: int = 2) -> int:
    """Image tokens the model sees for an image of this size: one per ``patch*merge`` square,
    sides rounded to that unit as the image processor's ``smart_resize`` does."""
    unit = patch * merge
    return max(1, round(height / unit)) * max(1, round(width / unit))
