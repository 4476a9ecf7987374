"""Build a tiny, randomly initialised FADA-shaped model for tests and the embedded default.

Same architecture as FADA-SKD (``qwen3_5``: Gated-DeltaNet linear-attention layers plus a
full-attention layer, a Qwen3.5 vision tower, a LoRA adapter on language and vision layers),
shrunk to a few small layers so it builds and runs in seconds on a CPU. Its weights are
random: every result it produces is marked ``untrained``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2VLImageProcessorPil, Qwen3_5Config, Qwen3_5ForConditionalGeneration
from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX, Qwen3_5Tokenizer

from services.models.manifest import MANIFEST_NAME, ModelManifest
from services.models.processor import ImageOnlyQwen3VLProcessor
from services.pipeline.profile import Profile, load_profile

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>", "<think>", "</think>",
]
VOCAB_SIZE = 768

# Thinking is always off: the generation prompt carries the empty think block, exactly as
# Qwen3.5's own template renders it with enable_thinking=False.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string -%}{{ message.content }}"
    "{%- else -%}{%- for part in message.content -%}"
    "{%- if part.type == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part.type == 'text' -%}{{ part.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is not defined or not enable_thinking -%}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif -%}{%- endif -%}"
)

# LoRA on the language model's attention and MLP and on the vision tower, like FADA-SKD's
# adapter. Linear-attention layers have no q/k/v/o, so those names only hit full attention.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "attn.qkv", "attn.proj"]


def _training_corpus(profile: Profile) -> list[str]:
    """Text the tokenizer must cover: prompts, labels, field names, digits, JSON punctuation."""
    labels = [*profile.view_labels, *profile.classes, *profile.map.routing_groups]
    lines = [*profile.prompts.model_dump().values(), " ".join(labels), " ".join(profile.interpretation_fields)]
    lines += [json.dumps({"label": label}) for label in labels]
    lines += [json.dumps([{"bbox_2d": [12, 345, 678, 1000], "label": c, "mask": [[1, 2], [30, 40]]}]) for c in labels]
    lines += [json.dumps({f: "normal appearance, not assessable" for f in profile.interpretation_fields})]
    lines += ["0 1 2 3 4 5 6 7 8 9 10 100 1000 [[0,0,2]] {} [] , : \" true false null"]
    return lines * 4


def build_tokenizer(profile: Profile) -> Qwen3_5Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(profile), trainer=trainer)
    return Qwen3_5Tokenizer(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            unk_token="<|endoftext|>")


def tiny_config(tokenizer: Qwen3_5Tokenizer) -> Qwen3_5Config:
    vocab = tokenizer.get_vocab()

    def ids(token: str) -> int:
        return vocab[token]

    text = {
        "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 4,  # 3 linear-attention layers, then 1 full-attention layer
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "linear_key_head_dim": 16, "linear_value_head_dim": 16,
        "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_conv_kernel_dim": 4,
        "max_position_embeddings": 8192,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                            "mrope_section": [2, 1, 1], "mrope_interleaved": True},
        "eos_token_id": ids("<|im_end|>"), "pad_token_id": ids("<|endoftext|>"),
        "bos_token_id": None,
    }
    vision = {
        "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
        "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
        "out_hidden_size": 64, "num_position_embeddings": 256,
    }
    return Qwen3_5Config(
        text_config=text, vision_config=vision,
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_tiny_model(out: Path, *, seed: int = 0, profile: Profile | None = None) -> ModelManifest:
    """Write ``out/base`` (model + processor), ``out/adapter`` (LoRA) and a manifest."""
    from peft import LoraConfig, get_peft_model

    profile = profile or load_profile()
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(seed)

    tokenizer = build_tokenizer(profile)
    # Images are resized to the profile's longest side before they reach the processor, so
    # the processor itself must not shrink them further.
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, temporal_patch_size=2, merge_size=2,
        size={"shortest_edge": 32 * 32, "longest_edge": 2048 * 2048},
    )
    processor = ImageOnlyQwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                          chat_template=CHAT_TEMPLATE)

    config = tiny_config(tokenizer)
    model = Qwen3_5ForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out / "base")
    processor.save_pretrained(out / "base")

    # init_lora_weights=False gives LoRA B non-zero weights, so the adapter changes logits.
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(str(out / "adapter"))

    manifest = ModelManifest(base="base", adapter="adapter", untrained=True,
                             description=f"tiny random qwen3_5 for tests (seed {seed})")
    (out / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=1), encoding="utf-8")
    return manifest
