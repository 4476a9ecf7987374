"""Generation with one image encoding per image.

``encode_image`` runs the vision tower and the chat prefix (everything up to and including
the image tokens) through the model once. Each phase then continues from a deep copy of that
cache: the full-attention KV, the linear-attention conv and recurrent states, and the
multimodal ``rope_deltas`` (per-request state kept on the model object), so every phase sees
exactly the token sequence a separate single-turn chat would show the model.

``generate_many`` decodes several such phase requests (of one or many images) together; the
batching mechanics live in ``services.pipeline.batching``, and ``generate`` is its batch of one.
The decode loop is ``dynamic`` (a growing ``DynamicCache``), ``static`` (fixed slot buffers,
``services.pipeline.slots``) or ``graphs`` (those buffers, each step a CUDA graph replay);
``auto`` picks ``graphs`` on CUDA and ``dynamic`` elsewhere. All give the same greedy answers.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import xgrammar as xgr
from PIL import Image
from transformers import DynamicCache

from services.models.loader import LoadedModel
from services.pipeline.batching import Decoded, GenRequest, decode_many
from services.pipeline.caches import row_of, stack_caches
from services.pipeline.grammars import PhaseGrammar
from services.pipeline.profile import Decoding
from services.pipeline.slots import MARGIN_COLUMNS, SlotStore

DecodeLoop = Literal["auto", "dynamic", "static", "graphs"]

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


class PromptLayoutError(RuntimeError):
    """The chat template does not put the image before the phase prompt in one user turn."""


@dataclass
class ImagePrefix:
    """The model state after the image: shared, read-only, by every phase of one image."""

    input_ids: torch.Tensor  # [1, n] ids of the prefix, image tokens included
    cache: Any
    rope_deltas: torch.Tensor
    model_size: tuple[int, int]  # (width, height) of the image the model saw
    encode_ms: float


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finished: bool  # False when max_new_tokens ran out before a stop token
    latency_ms: float
    prefill_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def resize_longest_side(image: Image.Image, max_side: int) -> Image.Image:
    """Shrink (never enlarge) so the longest side is at most ``max_side``, keeping aspect."""
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


class Engine:
    """Runs phase prompts against one loaded model. Not thread-safe: one call at a time."""

    def __init__(self, loaded: LoadedModel, *, max_side: int = 1024, decode_loop: DecodeLoop = "auto") -> None:
        self.model = loaded.model
        self.core = loaded.core
        self.processor = loaded.processor
        self.tokenizer = loaded.processor.tokenizer
        self.max_side = max_side
        self.device = next(self.model.parameters()).device
        if decode_loop == "auto":
            decode_loop = "graphs" if self.device.type == "cuda" else "dynamic"
        if decode_loop == "graphs" and self.device.type != "cuda":
            raise ValueError(f"decode loop 'graphs' needs a CUDA device, the model is on {self.device}")
        self.decode_loop: DecodeLoop = decode_loop
        self._slots: SlotStore | None = None
        self.slot_margin = MARGIN_COLUMNS  # spare KV columns per call (tests shrink it to force moves)
        self.prefill_rows = 16  # most requests prefilled in one forward (each holds a copy of its prefix)
        self.encode_rows = 8  # most images encoded in one call (vision activations grow with it)
        self._suffixes: dict[str, torch.Tensor] = {}
        self.vocab_size = int(self.core.config.text_config.vocab_size)
        vocab = self.tokenizer.get_vocab()
        self.stop_ids = {vocab[t] for t in STOP_TOKENS if t in vocab}
        self.tokenizer_info = xgr.TokenizerInfo.from_huggingface(
            self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=sorted(self.stop_ids))
        self.compiler = xgr.GrammarCompiler(self.tokenizer_info, max_threads=1)

    # -- prompts -------------------------------------------------------------------------

    def chat_text(self, prompt: str) -> str:
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return str(self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, enable_thinking=False))

    def split_chat(self, prompt: str) -> tuple[str, str]:
        """(prefix up to and including the image, the rest) of a single-turn chat."""
        text = self.chat_text(prompt)
        marker = self.processor.vision_end_token
        cut = text.find(marker)
        if cut < 0 or prompt not in text[cut:]:
            raise PromptLayoutError("chat template must place the image before the prompt")
        return text[: cut + len(marker)], text[cut + len(marker):]

    # -- prefix ---------------------------------------------------------------------------

    def prefix_tokens(self, image: Image.Image) -> int:
        """Tokens of ``image``'s prefix (chat header and image tokens), without running the model."""
        seen = resize_longest_side(image.convert("RGB"), self.max_side)
        prefix_text, _ = self.split_chat("")
        return len(self.processor(text=[prefix_text], images=[seen])["input_ids"][0])

    @torch.inference_mode()
    def encode_image(self, image: Image.Image) -> ImagePrefix:
        started = time.perf_counter()
        seen = resize_longest_side(image.convert("RGB"), self.max_side)
        prefix_text, _ = self.split_chat("")
        inputs = self.processor(text=[prefix_text], images=[seen], return_tensors="pt").to(self.device)
        cache = DynamicCache(config=self.core.config)
        self.core.model.rope_deltas = None
        self.model(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"], mm_token_type_ids=inputs["mm_token_type_ids"],
            cache=cache, use_cache=True, logits_to_keep=1,
        )
        rope_deltas = self.core.model.rope_deltas.clone()
        return ImagePrefix(input_ids=inputs["input_ids"], cache=cache, rope_deltas=rope_deltas,
                           model_size=seen.size, encode_ms=(time.perf_counter() - started) * 1000)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> list[ImagePrefix]:
        """Several images' prefixes from one vision-tower call and one forward, the prompts
        left-padded to the longest (padding before the prefix leaves the linear-attention
        states at zero and is masked for full attention); each equals its own ``encode_image``
        up to float rounding. One image is ``encode_image`` itself."""
        if len(images) == 1:
            return [self.encode_image(images[0])]
        started = time.perf_counter()
        seen = [resize_longest_side(image.convert("RGB"), self.max_side) for image in images]
        prefix_text, _ = self.split_chat("")
        inputs = self.processor(text=[prefix_text] * len(seen), images=seen, return_tensors="pt", padding=True,
                                padding_side="left").to(self.device)
        cache = DynamicCache(config=self.core.config)
        self.core.model.rope_deltas = None
        self.model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
            mm_token_type_ids=inputs["mm_token_type_ids"], cache=cache, use_cache=True, logits_to_keep=1,
        )
        deltas = self.core.model.rope_deltas  # per row, relative to the row's own (unpadded) tokens
        pads = (inputs["attention_mask"] == 0).sum(dim=1).tolist()
        encode_ms = (time.perf_counter() - started) * 1000 / len(seen)  # the call's time, shared
        return [ImagePrefix(input_ids=inputs["input_ids"][row:row + 1, pad:], cache=row_of(cache, row, pad),
                            rope_deltas=deltas[row:row + 1].clone(), model_size=image.size, encode_ms=encode_ms)
                for row, (pad, image) in enumerate(zip(pads, seen, strict=True))]

    # -- decoding -------------------------------------------------------------------------

    def compile(self, grammar: PhaseGrammar) -> xgr.CompiledGrammar:
        """Compact JSON, no free whitespace; xgrammar caches compiled grammars."""
        if grammar.ebnf is not None:
            return self.compiler.compile_grammar(grammar.ebnf)
        return self.compiler.compile_json_schema(grammar.schema, any_whitespace=False, separators=(",", ":"),
                                                 strict_mode=True)

    def suffix_ids(self, prompt: str) -> torch.Tensor:
        """[1, n] token ids of the chat after the image: the phase prompt and the answer header."""
        if prompt not in self._suffixes:  # a handful of phase prompts, asked for every image
            if len(self._suffixes) >= 1024:
                self._suffixes.clear()
            _, suffix_text = self.split_chat(prompt)
            self._suffixes[prompt] = self.tokenizer(suffix_text, add_special_tokens=False,
                                                    return_tensors="pt")["input_ids"]
        return self._suffixes[prompt]

    @property
    def slots(self) -> SlotStore | None:
        """The fixed decode buffers, once a static or graphs loop has allocated them."""
        return self._slots

    def release_slots(self) -> None:
        """Drop the fixed decode buffers (and graphs); the next call allocates them again."""
        self._slots = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def slot_store(self, template: Any, *, capacity: int, width: int) -> SlotStore:
        """The fixed decode buffers, kept between calls; rebuilt (and graphs captured again) only
        when a call needs more rows or columns than they have."""
        if self._slots is None or not self._slots.fits(capacity, width):
            grown = (max(capacity, self._slots.capacity), max(width, self._slots.width)) if self._slots else None
            self.release_slots()  # free the old buffers before allocating the new ones
            capacity, width = grown or (capacity, width)
            self._slots = SlotStore(self.core, template, capacity=capacity, width=width,
                                    graphs=self.decode_loop == "graphs")
        return self._slots

    @torch.inference_mode()
    def prefill(self, prefix: ImagePrefix, suffix: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """A private copy of the image prefix continued with ``suffix`` (batch of one): the cache
        and the next-token logits [1, vocab]."""
        cache = copy.deepcopy(prefix.cache)
        self.core.model.rope_deltas = prefix.rope_deltas
        out = self.model(input_ids=suffix.to(self.device), cache=cache, use_cache=True, logits_to_keep=1)
        return cache, out.logits[:, -1, :]

    @torch.inference_mode()
    def prefill_many(self, prefixes: Sequence[ImagePrefix],
                     suffixes: torch.Tensor) -> tuple[Any, list[int], torch.Tensor]:
        """``suffixes[i]`` ([rows, n], one length) after ``prefixes[i]``, in one forward: one cache
        of those rows, the prefixes left-padded to a common length, the pads, and each row's
        next-token logits [rows, vocab]. One row is ``prefill`` itself."""
        if len(prefixes) == 1:
            cache, logits = self.prefill(prefixes[0], suffixes)
            return cache, [0], logits
        lengths = [int(prefix.input_ids.shape[1]) for prefix in prefixes]
        pads = [max(lengths) - length for length in lengths]
        # stack_caches replaces the first cache's tensors: a copy, so the image prefix stays as it is.
        cache = stack_caches([copy.deepcopy(prefixes[0].cache), *(prefix.cache for prefix in prefixes[1:])], pads)
        # Positions as a single prefill computes them: after the prefix, shifted by its own rope delta.
        starts = torch.tensor([length + int(prefix.rope_deltas.reshape(-1)[0])
                               for length, prefix in zip(lengths, prefixes, strict=True)], device=self.device)
        positions = starts[:, None] + torch.arange(suffixes.shape[1], device=self.device)[None, :]
        mask = None
        if any(pads):
            columns = torch.arange(max(lengths) + suffixes.shape[1], device=self.device)
            mask = (columns[None, :] >= torch.tensor(pads, device=self.device)[:, None]).long()
        out = self.model(input_ids=suffixes.to(self.device), cache=cache, use_cache=True, attention_mask=mask,
                         position_ids=positions[None].expand(3, -1, -1), logits_to_keep=1)
        return cache, pads, out.logits[:, -1, :]

    def generate(self, prefix: ImagePrefix, prompt: str, *, grammar: xgr.CompiledGrammar | None,
                 max_new_tokens: int, decoding: Decoding, seed: int = 0, min_new_tokens: int = 0) -> Generation:
        """Continue a copy of the image prefix with the phase prompt and decode the answer."""
        request = GenRequest(prefix=prefix, prompt=prompt, grammar=grammar, max_new_tokens=max_new_tokens,
                             decoding=decoding, seed=seed, min_new_tokens=min_new_tokens)
        return self.generate_many([request], max_batch=1)[0]

    @torch.inference_mode()
    def generate_many(self, requests: Sequence[GenRequest], *, max_batch: int = 8,
                      reserve_tokens: int = 0) -> list[Generation]:
        """Every request's answer, in order, decoding up to ``max_batch`` of them together
        (see ``services.pipeline.batching``); greedy answers equal ``generate``'s.
        ``reserve_tokens`` sizes the fixed decode buffers for longer requests than these."""
        return [self._generation(done)
                for done in decode_many(self, requests, max_batch=max_batch, reserve_tokens=reserve_tokens)]

    def _generation(self, done: Decoded) -> Generation:
        return Generation(text=self.tokenizer.decode(done.token_ids, skip_special_tokens=True),
                          token_ids=done.token_ids, finished=done.finished, latency_ms=done.latency_ms,
                          prefill_tokens=done.prefill_tokens, extra={"input_ids": done.input_ids})

    # -- the reference path ----------------------------------------------------------------

    @torch.inference_mode()
    def generate_single_turn(self, image: Image.Image, prompt: str, *, grammar: xgr.CompiledGrammar | None,
                             max_new_tokens: int, min_new_tokens: int = 0) -> Generation:
        """What the reference app does: one fresh chat per phase, image encoded again, greedy.

        Kept for the equivalence test and the benchmark, not used by the pipeline.
        """
        from xgrammar.contrib.hf import LogitsProcessor

        started = time.perf_counter()
        seen = resize_longest_side(image.convert("RGB"), self.max_side)
        inputs = self.processor(text=[self.chat_text(prompt)], images=[seen], return_tensors="pt").to(self.device)
        self.core.model.rope_deltas = None
        processors = [LogitsProcessor(grammar)] if grammar is not None else []
        output = self.model.generate(
            **inputs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=False,
            logits_processor=processors,
            eos_token_id=sorted(self.stop_ids), pad_token_id=self.tokenizer.pad_token_id,
        )
        new = output[0, inputs["input_ids"].shape[1]:].tolist()
        finished = bool(new) and new[-1] in self.stop_ids
        tokens = [t for t in new if t not in self.stop_ids]
        return Generation(text=self.tokenizer.decode(tokens, skip_special_tokens=True), token_ids=tokens,
                          finished=finished, latency_ms=(time.perf_counter() - started) * 1000,
                          extra={"input_ids": inputs["input_ids"][0].tolist()})

