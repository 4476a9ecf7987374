"""GPU throughput of the four model phases: the reference way against the worker's batched path.

Builds a randomly initialised model of the FADA-SKD base shape (Qwen3.5-4B:
``services/models/configs/qwen3_5_4b_shape.json``) directly on the device, makes synthetic
1024x768 images and forces every answer to its full length (interpret 250, classify 16, detect
120, segment 600 tokens: stop tokens are suppressed and no grammar runs), so both ways do the
same, known amount of work. Random weights make the text meaningless but not the timing.

In one run it measures

* the reference way: four separate single-turn chats per image, batch 1, the image encoded
  again by each (what the reference app does, ``Engine.generate_single_turn``);
* the worker's path: each image encoded once (``Engine.encode_image``), then the phases in two
  waves over a round of images, ``Engine.generate_many`` with ``--batch-size`` rows decoding
  together: wave 1 interpret + classify of every image, wave 2 detect + segment;

and prints s/image, images/s, the speedup, one image's latency alone on the worker path, the
time of one decode step, peak GPU memory, the
card and whether the fast linear-attention kernels are in use. The worker's decode loop is
``--decode`` (``auto``: CUDA graphs over fixed buffers on a GPU, see
``services/pipeline/slots.py``); a short probe then runs the same rows through
``--compare-loop`` (default: the dynamic loop) for the decode-step time of both in this run,
and counts the rows whose greedy tokens agree. ``--tiny`` runs the same code on
the CPU with the toy model and short answers (part of the test suite). Usage:

    python bench/gpu_pipeline.py [--batch-size 8] [--images 16] [--json out.json] [--memory-sweep 1,2,4,8,16]
    python bench/gpu_pipeline.py --tiny --batch-size 2 --images 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import time
import traceback
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import transformers
from PIL import Image
from rich.console import Console
from rich.table import Table
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.utils import logging as hf_logging

from services.models.kernels import kernel_status, retry_with_torch_kernels, use_torch_kernels
from services.models.loader import resolve_device, resolve_dtype
from services.models.shapes import SHAPES, BuiltModel, build_shape_model, memory_model
from services.pipeline.batching import GenRequest
from services.pipeline.engine import DecodeLoop, Engine, Generation, ImagePrefix, resize_longest_side
from services.pipeline.profile import Decoding, Profile, load_profile
from services.pipeline.slots import SlotStore, width_for
from services.pipeline.warmup import largest_request

PHASES = ("interpret", "classify", "detect", "segment")
WAVES = (("interpret", "classify"), ("detect", "segment"))  # wave 2 needs MAP, which needs wave 1
FULL_LENGTHS = {"interpret": 250, "classify": 16, "detect": 120, "segment": 600}  # MODEL_FACTS anchors
TINY_LENGTHS = {"interpret": 8, "classify": 4, "detect": 8, "segment": 16}
GIB = 1024**3


# -- inputs -----------------------------------------------------------------------------------


def parse_lengths(text: str) -> dict[str, int]:
    """``interpret=250,classify=16,...``: every phase named once, each at least 1 token."""
    lengths: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in PHASES or not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"bad length {part!r}: use PHASE=TOKENS with PHASE in {PHASES}")
        lengths[name] = int(value)
    if set(lengths) != set(PHASES):
        raise argparse.ArgumentTypeError(f"give a length for each of {PHASES}")
    return lengths


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad batch sizes {text!r}: use e.g. 1,2,4,8,16") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("batch sizes must be positive")
    return sizes


def synthetic_image(width: int, height: int, seed: int) -> Image.Image:
    """A smooth gradient plus speckle, grey in RGB: closer to an ultrasound frame than noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = ((xx + yy + seed * 37) % 256).astype(np.float32)
    pixels = np.clip(base + rng.normal(0, 20, (height, width)), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(pixels[..., None], 3, axis=2))


def phase_prompts(profile: Profile) -> dict[str, str]:
    """The profile's prompts filled the way the pipeline fills them (a typical class list)."""
    classes = ", ".join(profile.classes[:4])
    fills = {"{labels}": ", ".join(profile.view_labels), "{classes}": classes, "{max_points}": "64"}
    prompts: dict[str, str] = {}
    for phase in PHASES:
        text: str = getattr(profile.prompts, phase)
        for key, value in fills.items():
            text = text.replace(key, value)
        prompts[phase] = text
    return prompts


# -- environment ------------------------------------------------------------------------------


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


# -- timing -----------------------------------------------------------------------------------


class StepTimer:
    """Times every forward of the model, split into image encodes, prefills and decode steps,
    and every run of the vision tower.

    Hooks on the top module see what any path runs (``model.generate`` and the batch engine
    alike); ``model.generate`` runs the vision tower before its first forward, so the tower has
    hooks of its own. On CUDA each call is bracketed by CUDA events, which do not synchronise,
    so the timed code keeps its own pace; the events are read at ``summary``."""

    def __init__(self, model: torch.nn.Module, vision: torch.nn.Module | None, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.records: list[tuple[str, int, Any, Any]] = []
        self._open: list[tuple[str, int, Any]] = []  # a stack: the tower runs inside an encode
        self._handles = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                         model.register_forward_hook(self._post, with_kwargs=True)]
        if vision is not None:
            self._handles += [vision.register_forward_pre_hook(self._pre_vision, with_kwargs=True),
                              vision.register_forward_hook(self._post, with_kwargs=True)]
        # The fixed-buffer loops call the language model directly (or replay a graph of it), not
        # the top module: their steps are timed around SlotStore.step, the whole step.
        self._slot_step = SlotStore.step
        timer = self

        def timed_step(store: SlotStore, tokens: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
            start = timer._now()
            logits = timer._slot_step(store, tokens, positions)
            timer.records.append(("decode", len(tokens), start, timer._now()))
            return logits

        SlotStore.step = timed_step  # type: ignore[method-assign,assignment]

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _pre(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ref = kwargs.get("input_ids")
        if ref is None:
            ref = kwargs.get("inputs_embeds", args[0] if args else None)
        batch, length = (int(ref.shape[0]), int(ref.shape[1])) if ref is not None else (0, 0)
        with_image = kwargs.get("pixel_values") is not None or kwargs.get("mm_encoder_outputs") is not None
        kind = "encode" if with_image else ("decode" if length == 1 else "prefill")
        self._open.append((kind, batch, self._now()))

    def _pre_vision(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._open.append(("vision", 1, self._now()))

    def _post(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self._open:
            kind, batch, start = self._open.pop()
            self.records.append((kind, batch, start, self._now()))

    def mark(self) -> int:
        return len(self.records)

    def summary(self, since: int = 0) -> dict[str, Any]:
        """ms spent per kind (``vision`` also counts inside ``encode`` when the tower runs in
        the forward), decode steps per batch size and the mean ms of one decode step."""
        if self.cuda:
            torch.cuda.synchronize()
        totals: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        by_batch: dict[int, list[float]] = {}
        for kind, batch, start, end in self.records[since:]:
            ms = start.elapsed_time(end) if self.cuda else (end - start) * 1000
            totals[kind] += ms
            counts[kind] += 1
            if kind == "decode":
                by_batch.setdefault(batch, []).append(ms)
        steps = counts["decode"]
        return {
            "ms": {k: round(v, 3) for k, v in totals.items()},
            "calls": dict(counts),
            "decode_steps": steps,
            "decode_step_ms": round(totals["decode"] / steps, 3) if steps else None,
            "decode_step_ms_by_batch": {str(b): round(statistics.mean(v), 3) for b, v in sorted(by_batch.items())},
            "decode_steps_by_batch": {str(b): len(v) for b, v in sorted(by_batch.items())},
        }

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        SlotStore.step = self._slot_step  # type: ignore[method-assign]


class Deadline(StoppingCriteria):
    """Stops ``model.generate`` at a wall-clock time; the caller extrapolates what was left."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        done = time.perf_counter() >= self.at
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> int | None:
    """Reset the peak counters; the bytes still allocated then (weights, buffers kept from an
    earlier stage), which every peak measured after it includes."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _peak(device: torch.device, held_at_start: int | None) -> dict[str, int | None] | None:
    if device.type != "cuda":
        return None
    return {"allocated": torch.cuda.max_memory_allocated(device), "reserved": torch.cuda.max_memory_reserved(device),
            "held_at_start": held_at_start}


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


# -- the two paths ----------------------------------------------------------------------------


@dataclass
class Bench:
    engine: Engine
    device: torch.device
    prompts: dict[str, str]
    timer: StepTimer
    decoding: Decoding

    @torch.inference_mode()
    def reference_call(self, image: Image.Image, phase: str, tokens: int, *, deadline: float) -> Generation:
        """One single-turn chat, batch 1, the image encoded again: ``Engine.generate_single_turn``
        with the answer forced to ``tokens`` tokens (stop tokens suppressed, no grammar) and a
        deadline, which that method does not take."""
        engine = self.engine
        started = time.perf_counter()
        seen = resize_longest_side(image.convert("RGB"), engine.max_side)
        inputs = engine.processor(text=[engine.chat_text(self.prompts[phase])], images=[seen],
                                  return_tensors="pt").to(self.device)
        engine.core.model.rope_deltas = None
        output = engine.model.generate(
            **inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
            eos_token_id=sorted(engine.stop_ids), pad_token_id=engine.tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([Deadline(deadline)]),
        )
        new = output[0, inputs["input_ids"].shape[1]:].tolist()
        _sync(self.device)
        return Generation(text=engine.tokenizer.decode(new, skip_special_tokens=True), token_ids=new,
                          finished=False, latency_ms=(time.perf_counter() - started) * 1000,
                          prefill_tokens=int(inputs["input_ids"].shape[1]))

    def worker_round(self, images: Sequence[Image.Image], lengths: dict[str, int], batch: int, *,
                     reserve_tokens: int = 0) -> list[Generation]:
        """One round of the worker's path: every image encoded once (several per call), then two waves through
        ``Engine.generate_many``; the longest phase of a wave goes first so its rows start
        early and the short ones fill the slots they leave."""
        step = self.engine.encode_rows  # as the worker's runner does: several images per call
        prefixes: list[ImagePrefix] = [prefix for i in range(0, len(images), step)
                                       for prefix in self.engine.encode_images(images[i:i + step])]
        results: list[Generation] = []
        for wave in WAVES:
            order = sorted(wave, key=lambda phase: -lengths[phase])
            requests = [GenRequest(prefix=prefix, prompt=self.prompts[phase], grammar=None,
                                   max_new_tokens=lengths[phase], decoding=self.decoding, seed=0,
                                   min_new_tokens=lengths[phase])
                        for phase in order for prefix in prefixes]
            generations = self.engine.generate_many(requests, max_batch=batch, reserve_tokens=reserve_tokens)
            for generation, phase in zip(generations, [p for p in order for _ in prefixes], strict=True):
                generation.extra["phase"] = phase
            results += generations
        _sync(self.device)
        return results


def run_reference(bench: Bench, images: Sequence[Image.Image], lengths: dict[str, int], *,
                  deadline: float, fallback_step_ms: float) -> dict[str, Any]:
    """The reference way over ``images``; a phase cut by the deadline is extrapolated from its
    own decode-step time (the warm-up's when it was cut before any decode step) and marked so."""
    held = _reset_peak(bench.device)
    mark = bench.timer.mark()
    tokens: dict[str, list[int]] = {phase: [] for phase in PHASES}
    per_image: list[float] = []
    extrapolated = False
    for image in images:
        image_s = 0.0
        for phase in PHASES:
            call_mark = bench.timer.mark()
            generation = bench.reference_call(image, phase, lengths[phase], deadline=deadline)
            took = generation.latency_ms / 1000
            produced = len(generation.token_ids)
            if produced < lengths[phase]:
                step_ms = bench.timer.summary(call_mark)["decode_step_ms"] or fallback_step_ms
                took += (lengths[phase] - produced) * step_ms / 1000
                extrapolated = True
            tokens[phase].append(produced)
            image_s += took
        per_image.append(image_s)
        if time.perf_counter() >= deadline:
            break
    s_per_image = statistics.mean(per_image)
    return {"images": len(per_image), "s_per_image": round(s_per_image, 4),
            "images_per_s": round(1 / s_per_image, 4), "extrapolated": extrapolated, "tokens": tokens,
            "timer": bench.timer.summary(mark), "peak_memory": _peak(bench.device, held)}


def run_worker(bench: Bench, images: Sequence[Image.Image], lengths: dict[str, int], *, batch: int,
               round_images: int, deadline: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Rounds of ``round_images`` images until all are done or the next round would pass the
    deadline (the first round always runs)."""
    held = _reset_peak(bench.device)
    mark = bench.timer.mark()
    tokens: dict[str, list[int]] = {phase: [] for phase in PHASES}
    round_s: list[float] = []
    done = 0
    stopped: str | None = None
    while done < len(images):
        chunk = images[done:done + round_images]
        if round_s and time.perf_counter() + max(round_s) * len(chunk) / round_images > deadline:
            stopped = f"time budget: {done} of {len(images)} images done"
            break
        started = time.perf_counter()
        generations = bench.worker_round(chunk, lengths, batch)
        round_s.append(time.perf_counter() - started)
        for generation in generations:
            tokens[generation.extra["phase"]].append(len(generation.token_ids))
        done += len(chunk)
        log(f"  worker round {len(round_s)}: {len(chunk)} images in {round_s[-1]:.2f} s")
    s_per_image = sum(round_s) / done
    return {"images": done, "rounds": len(round_s), "round_s": [round(s, 4) for s in round_s],
            "s_per_image": round(s_per_image, 4), "images_per_s": round(1 / s_per_image, 4),
            "tokens": tokens, "stopped": stopped, "timer": bench.timer.summary(mark),
            "peak_memory": _peak(bench.device, held)}


def run_single(bench: Bench, image: Image.Image, lengths: dict[str, int], *, batch: int) -> dict[str, Any]:
    """One image alone on the worker path (an idle worker, one job): its latency, all phases."""
    mark = bench.timer.mark()
    started = time.perf_counter()
    bench.worker_round([image], lengths, batch)
    return {"seconds": round(time.perf_counter() - started, 4), "timer": bench.timer.summary(mark)}


def run_loop_probe(bench: Bench, other: Engine, images: Sequence[Image.Image], *, batch: int,
                   tokens: int) -> dict[str, Any]:
    """The same ``batch`` rows (interpret, forced to ``tokens`` tokens) through the worker's
    decode loop and ``other``'s: the decode-step time of each at that batch, and how many rows
    got the same greedy tokens (bf16 may flip near-ties of the random model; fp32 should not).
    To tell rounding from a fault when rows differ: where each row's tokens first differ (a
    rounding flip lands anywhere; a wrong step from the first decode step on: the first token
    comes from the prefill, which both loops share) and whether each loop repeats its own
    tokens between its two runs (a graph replays the same kernels: it should)."""
    prefixes = [bench.engine.encode_image(image) for image in images[:batch]]
    requests = [GenRequest(prefix=prefixes[i % len(prefixes)], prompt=bench.prompts["interpret"], grammar=None,
                           max_new_tokens=tokens, decoding=bench.decoding, seed=0, min_new_tokens=tokens)
                for i in range(batch)]
    loops: dict[str, Any] = {}
    answers: list[list[list[int]]] = []
    for engine in (bench.engine, other):
        warm = [g.token_ids for g in engine.generate_many(requests, max_batch=batch)]  # buffers, graphs, allocator
        _sync(bench.device)
        mark = bench.timer.mark()
        started = time.perf_counter()
        generations = engine.generate_many(requests, max_batch=batch)
        _sync(bench.device)
        summary = bench.timer.summary(mark)
        loops[engine.decode_loop] = {
            "seconds": round(time.perf_counter() - started, 4), "decode_steps": summary["decode_steps"],
            "decode_step_ms": summary["decode_step_ms_by_batch"].get(str(batch), summary["decode_step_ms"])}
        answers.append([g.token_ids for g in generations])
        loops[engine.decode_loop]["rows_repeated"] = sum(a == b for a, b in zip(warm, answers[-1], strict=True))
    mine, theirs = (loops[e.decode_loop]["decode_step_ms"] for e in (bench.engine, other))
    same = sum(a == b for a, b in zip(*answers, strict=True))
    return {"batch": batch, "tokens": tokens, "loops": loops, "rows_equal": same, "rows": batch,
            "first_difference": [first_difference(a, b) for a, b in zip(*answers, strict=True)],
            "step_ratio": round(theirs / mine, 3) if mine and theirs else None}


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The index of the first token where two answers differ; None when they are equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def run_sweep(bench: Bench, sizes: Sequence[int], lengths: dict[str, int], *, width: int, height: int,
              deadline: float, estimate_s: float, log: Callable[[str], None],
              reserve_tokens: int = 0) -> list[dict[str, Any]]:
    """Peak memory of one worker round of ``b`` images at ``max_batch=b`` for each size, largest
    first (the sizes that matter for sizing a card come first when time runs short), with
    fixed decode buffers for requests of ``reserve_tokens`` (the service's: its largest
    request). A size that runs out of memory is recorded and the smaller ones still run; a
    size whose round would pass the deadline (``estimate_s`` before any has run) is skipped."""
    rows: list[dict[str, Any]] = []
    last_s = estimate_s
    for size in sorted(sizes, reverse=True):
        if time.perf_counter() + last_s > deadline:
            rows.append({"batch": size, "skipped": "time budget"})
            continue
        images = [synthetic_image(width, height, 1000 + i) for i in range(size)]
        bench.engine.release_slots()  # each size measured with buffers of its own size
        held = _reset_peak(bench.device)
        started = time.perf_counter()
        if not _survives_oom(lambda: bench.worker_round(images, lengths, size,  # noqa: B023
                                                        reserve_tokens=reserve_tokens), bench.device):
            rows.append({"batch": size, "oom": True})
            log(f"  sweep batch {size}: out of memory")
            continue
        last_s = time.perf_counter() - started
        rows.append({"batch": size, "seconds": round(last_s, 3), "peak_memory": _peak(bench.device, held)})
        log(f"  sweep batch {size}: {last_s:.2f} s, peak {_fmt_bytes(rows[-1]['peak_memory'])}")
        _free(bench.device)
    return sorted(rows, key=lambda row: int(row["batch"]))


def _survives_oom(work: Callable[[], object], device: torch.device) -> bool:
    """Run ``work``; False if it ran out of memory. The cache is emptied after the exception
    (and the frames that held its tensors) is gone, so the memory really comes back."""
    try:
        work()
        return True
    except Exception as exc:
        if not _is_oom(exc):
            raise
    _free(device)
    return False


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fmt_bytes(peak: dict[str, Any] | None) -> str:
    if not peak:
        return "n/a (cpu)"
    held = f", held at start {peak['held_at_start'] / GIB:.2f}" if peak.get("held_at_start") is not None else ""
    return f"{peak['allocated'] / GIB:.2f} GiB (reserved {peak['reserved'] / GIB:.2f}{held})"


def _size(nbytes: int) -> str:
    """GiB for real models, MiB for the toy one (whose caches round to 0.00 GiB)."""
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB / 10 else f"{nbytes / 1024**2:.2f} MiB"


# -- main -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="toy model on the CPU with short answers (the test suite's run)")
    parser.add_argument("--shape", default=None, help=f"model shape: {', '.join(SHAPES)} or a config.json path "
                        "(default qwen3_5-4b; tiny with --tiny)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows decoded together on the worker path")
    parser.add_argument("--decode", choices=("auto", "dynamic", "static", "graphs"), default="auto",
                        help="the worker path's decode loop (auto: graphs on CUDA, dynamic on the CPU)")
    parser.add_argument("--compare-loop", choices=("none", "dynamic", "static"), default=None,
                        help="loop the probe compares with (default: dynamic, none when --decode is dynamic)")
    parser.add_argument("--probe-tokens", type=int, default=48, help="tokens per row in the loop probe")
    parser.add_argument("--images", type=int, default=None, help="images on the worker path (default 2x batch)")
    parser.add_argument("--round-images", type=int, default=None,
                        help="images per worker round, both waves (default: the batch size)")
    parser.add_argument("--reference-images", type=int, default=1,
                        help="images the reference way runs (about 90 s each for the 4B shape on one GPU)")
    parser.add_argument("--reference-max-s", type=float, default=150.0,
                        help="cap on the reference way's wall time; the rest is extrapolated")
    parser.add_argument("--lengths", type=parse_lengths, default=None,
                        help="forced answer lengths, e.g. interpret=250,classify=16,detect=120,segment=600")
    parser.add_argument("--size", default="1024x768", help="synthetic image size WxH")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on cuda, float32 on cpu), bfloat16, float32")
    parser.add_argument("--memory-sweep", type=parse_sizes, default=None, metavar="1,2,4,8,16",
                        help="also measure the worker path's peak memory at these batch sizes")
    parser.add_argument("--sweep-lengths", type=parse_lengths, default=None,
                        help="answer lengths for the sweep (default: only the longest phase at full length)")
    parser.add_argument("--time-budget-s", type=float, default=420.0,
                        help="wall-clock budget from start; later stages are cut short to fit")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here (updated per stage)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the worker path's warm-up round (quick CPU checks; timings include first calls)")
    parser.add_argument("--kernels", choices=("auto", "torch"), default="auto",
                        help="linear-attention kernels: auto (fla / causal-conv1d when installed, PyTorch's "
                        "if they fail in the warm-up) or torch (PyTorch's only)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the figures (also printed, and written to ``--json``)."""
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    console = Console()
    if not console.is_terminal:  # a log file: wide enough for the tables (rich assumes 80)
        console = Console(width=150)
    width, height = (int(v) for v in args.size.lower().split("x"))
    if min(args.batch_size, args.images or 1, args.round_images or 1, args.reference_images) < 1:
        raise SystemExit("--batch-size, --images, --round-images and --reference-images must be positive")
    if args.kernels == "torch":
        use_torch_kernels()
    device_name = "cpu" if args.tiny and args.device == "auto" else resolve_device(args.device)
    device = torch.device(device_name)
    dtype = resolve_dtype(args.dtype, device_name)
    results: dict[str, Any] = {
        "card": card_name(device), "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
        "kernels": kernel_status(), "shape": args.shape or ("tiny" if args.tiny else "qwen3_5-4b"),
        "lengths": args.lengths or (TINY_LENGTHS if args.tiny else FULL_LENGTHS), "image_size": f"{width}x{height}",
        "batch_size": args.batch_size, "round_images": args.round_images or args.batch_size,
        "time_budget_s": args.time_budget_s, "notes": [],
    }

    def save() -> None:
        results["elapsed_s"] = round(time.perf_counter() - t0, 2)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")

    def log(message: str) -> None:
        console.print(f"[{time.perf_counter() - t0:7.1f}s] {message}", highlight=False, markup=False)

    try:
        _stages(args, results, device=device, dtype=dtype, width=width, height=height, t0=t0, save=save, log=log)
    except BaseException:
        # The one GPU try must leave what it measured, and why it stopped, in the JSON.
        results["error"] = traceback.format_exc()[-3000:]
        save()
        raise
    results["targets"] = targets(results)
    save()
    print_report(console, results)
    return results


def _stages(args: argparse.Namespace, results: dict[str, Any], *, device: torch.device, dtype: torch.dtype,
            width: int, height: int, t0: float, save: Callable[[], None], log: Callable[[str], None]) -> None:
    """Build, warm up, worker path, reference way, memory sweep; ``results`` saved after each."""
    deadline = t0 + args.time_budget_s
    shape, lengths, batch = results["shape"], results["lengths"], args.batch_size
    n_images, round_images = args.images or 2 * batch, results["round_images"]
    log(f"{results['card']}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"kernels {results['kernels']}")
    if device.type == "cuda" and not results["kernels"]["fla"]["in_use"]:
        results["notes"].append("fla kernels not in use: linear attention runs the slow PyTorch fallback")
        log("WARNING: flash-linear-attention is not in use; figures are for the PyTorch fallback")

    # Build: straight onto the device in the target dtype (see services/models/shapes.py).
    profile = load_profile()
    built: BuiltModel = build_shape_model(shape, device=str(device), dtype=dtype, seed=args.seed, profile=profile)
    engine = Engine(built.loaded, max_side=profile.image.max_side, decode_loop=args.decode)
    results["decode_loop"] = engine.decode_loop
    config = built.loaded.model.config
    memory = memory_model(config, weight_dtype_bytes=torch.finfo(dtype).bits // 8)
    results.update(build_s=round(built.build_s, 2), params=memory.params, vision_params=memory.vision_params,
                   weight_bytes=memory.weight_bytes, vocab_size=int(config.text_config.vocab_size))
    if device.type == "cuda":
        results["memory_after_build"] = torch.cuda.memory_allocated(device)
    log(f"built {shape} ({memory.params / 1e6:,.1f} M params) on {device} in {built.build_s:.1f} s")
    save()

    prompts = phase_prompts(profile)
    timer = StepTimer(engine.model, getattr(engine.core.model, "visual", None), device)
    bench = Bench(engine=engine, device=device, prompts=prompts, timer=timer, decoding=Decoding())
    images = [synthetic_image(width, height, args.seed + i) for i in range(max(n_images, args.reference_images))]

    # Warm-up: both paths once with short answers, at the batch size the worker path uses
    # (CUDA context, cuBLAS handles, Triton autotuning of the fla kernels, allocator pools).
    # The short reference call always runs: its decode-step time sizes the reference's budget.
    prefix_tokens = engine.prefix_tokens(images[0])
    suffix = {p: int(engine.suffix_ids(prompts[p]).shape[1]) for p in PHASES}
    # Short answers, but fixed buffers as the service sizes them, for its largest request
    # (largest image, longest prompt, largest answer budget of the profile), and at least as
    # wide as the measured rounds need: a worker keeps its buffers from its warm-up on, so no
    # measured round pays for growing them (and for capturing the graphs again).
    service_tokens = largest_request(engine, profile)
    reserve = max(service_tokens, prefix_tokens + max(suffix.values()) + max(lengths.values()))

    def warm_up() -> float:
        if not args.no_warmup and not _survives_oom(
                lambda: bench.worker_round(images[:min(batch, len(images))], dict.fromkeys(PHASES, 2), batch,
                                           reserve_tokens=reserve), device):
            results["notes"].append(f"warm-up ran out of memory at batch {batch}")
        warm_mark = timer.mark()
        bench.reference_call(images[0], "interpret", 4, deadline=float("inf"))
        return float(timer.summary(warm_mark)["decode_step_ms"] or 0.0)

    started = time.perf_counter()
    # The first call of the fast kernels compiles them: a failure there is the kernels', and
    # the run goes on with PyTorch's (slower, noted) rather than ending.
    ref_step_ms, kernel_error = retry_with_torch_kernels(warm_up, reset=engine.release_slots)
    if kernel_error is not None:
        last_line = kernel_error.strip().splitlines()[-1]
        log(f"fast kernels failed in the warm-up ({last_line}); going on with PyTorch's")
        results["kernel_error"] = kernel_error
        results["notes"].append(f"fast kernels failed in the warm-up, PyTorch's used instead: {last_line}"[:300])
        results["kernels"] = kernel_status()
    results.update(warmup_s=round(time.perf_counter() - started, 2), prefix_tokens=prefix_tokens,
                   suffix_tokens=suffix, service_request_tokens=service_tokens, computed_memory=computed_memory_table(
                       memory, prefix_tokens, args.memory_sweep or [1, 2, 4, 8, 16, 32],
                       slots=engine.decode_loop != "dynamic", max_tokens=service_tokens))
    log(f"warm-up {results['warmup_s']:.1f} s; prefix {prefix_tokens} tokens, phase suffixes {suffix}")
    save()

    # Worker path first: it is the figure the target is about. Leave room for the reference.
    reference_budget = min(args.reference_max_s,
                           args.reference_images * sum(lengths.values()) * ref_step_ms / 1000 * 1.2 + 5)
    log(f"worker path: {n_images} images, batch {batch}, rounds of {round_images}")
    # A weak reference: a strong one would keep the warm-up's buffers (and graph pool) alive
    # through the later stages, in every peak they measure (the memory sweep's, on 2026-12-04).
    warm_slots = weakref.ref(engine.slots) if engine.slots is not None else None
    worker: dict[str, Any] = {"oom": True}
    if _survives_oom(lambda: worker.update(run_worker(
            bench, images[:n_images], lengths, batch=batch, round_images=round_images,
            deadline=deadline - reference_budget, log=log)), device):
        worker.pop("oom")
    else:
        results["notes"].append(f"worker path ran out of memory at batch {batch}: try a smaller --batch-size")
    results["worker"] = worker
    if engine.slots is not None:
        # grown inside a measured round
        worker["slots_rebuilt"] = warm_slots is None or engine.slots is not warm_slots()
        results["graphs"] = engine.slots.graphs
        if engine.slots.capture_error:
            results["notes"].append(f"CUDA graph capture failed, eager static steps: {engine.slots.capture_error}")
    save()

    # One image alone: a worker with a single job. Its wave 1 decodes at most 2 rows, its wave 2 too.
    steps = max(lengths["interpret"], lengths["classify"]) + max(lengths["detect"], lengths["segment"])
    step_s = ((worker.get("timer") or {}).get("decode_step_ms") or ref_step_ms) / 1000
    if time.perf_counter() + steps * step_s * 1.5 < deadline - reference_budget:
        log(f"single image alone on the worker path ({steps} decode steps)")
        results["single_image"] = run_single(bench, images[0], lengths, batch=batch)
    else:
        results["notes"].append("single-image latency skipped: time budget")
    save()

    compare: DecodeLoop | Literal["none"] = args.compare_loop or (
        "none" if engine.decode_loop == "dynamic" else "dynamic")
    if compare != "none" and compare != engine.decode_loop:
        log(f"loop probe: {engine.decode_loop} against {compare}, batch {batch}, {args.probe_tokens} tokens per row")
        other = Engine(built.loaded, max_side=profile.image.max_side, decode_loop=compare)
        probe: dict[str, Any] = {"oom": True}
        if _survives_oom(lambda: probe.update(run_loop_probe(bench, other, images, batch=batch,
                                                             tokens=args.probe_tokens)), device):
            probe.pop("oom")
        results["loop_probe"] = probe
        save()

    # The reference way last of the timed stages: a reference app holds no worker buffers, so
    # they are released first and its peak is its own (held_at_start: the weights).
    engine.release_slots()
    log(f"reference way: {args.reference_images} image(s), 4 single-turn calls each, batch 1")
    reference = run_reference(bench, images[:args.reference_images], lengths,
                              deadline=min(deadline, time.perf_counter() + args.reference_max_s),
                              fallback_step_ms=ref_step_ms)
    results["reference"] = reference
    if reference["extrapolated"]:
        results["notes"].append("reference cut by its time cap: the rest extrapolated from its decode-step time")
    if "s_per_image" in worker:
        results["speedup"] = round(reference["s_per_image"] / worker["s_per_image"], 3)
    save()

    if args.memory_sweep:
        sweep_lengths = args.sweep_lengths or peak_lengths(lengths)
        log(f"memory sweep {args.memory_sweep} with lengths {sweep_lengths}")
        # A round's decode steps grow with the sum of its answer lengths: scale the main round.
        round_s = max(worker.get("round_s") or [0.0])
        estimate = round_s * sum(sweep_lengths.values()) / sum(lengths.values())
        results["memory_sweep"] = {"lengths": sweep_lengths, "reserve_tokens": service_tokens, "rows": run_sweep(
            bench, args.memory_sweep, sweep_lengths, width=width, height=height, deadline=deadline,
            estimate_s=estimate, log=log, reserve_tokens=service_tokens)}
    timer.close()


TARGET_S_PER_IMAGE = 0.5  # issue 6, steady state on one H100/H200, 4B shape
TARGET_SINGLE_S = 10.0
CARD_24GB_USABLE = 22.5 * GIB  # what an A10 or L4 shows to CUDA; an RTX 4090 shows about 24 GiB
CUDA_CONTEXT = GIB // 2  # outside the allocator's counts


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The run's figures against the issue's targets, and which measured batch sizes (the
    worker path's and the sweep's, both with the service's buffers) fit a 24 GB card: reserved
    peak + CUDA context under 22.5 GiB. None where a figure is missing."""
    worker, single = results.get("worker", {}), results.get("single_image", {})
    s_per_image, seconds = worker.get("s_per_image"), single.get("seconds")
    # The targets are the 4B shape's on a GPU: no verdict on other runs.
    applies = results.get("shape") == "qwen3_5-4b" and str(results.get("device")).startswith("cuda")

    def verdict(measured: float | None, target: float) -> bool | None:
        return None if measured is None or not applies else measured <= target

    fits: dict[str, bool] = {}
    for row in [{"batch": results["batch_size"], "peak_memory": worker.get("peak_memory")},
                *(results.get("memory_sweep") or {}).get("rows", [])]:
        if row.get("oom"):
            fits[str(row["batch"])] = False
        elif row.get("peak_memory"):
            fits[str(row["batch"])] = row["peak_memory"]["reserved"] + CUDA_CONTEXT <= CARD_24GB_USABLE
    return {"s_per_image": {"target": TARGET_S_PER_IMAGE, "measured": s_per_image,
                            "met": verdict(s_per_image, TARGET_S_PER_IMAGE)},
            "single_image_s": {"target": TARGET_SINGLE_S, "measured": seconds,
                               "met": verdict(seconds, TARGET_SINGLE_S)},
            "fits_24gb_by_batch": dict(sorted(fits.items(), key=lambda item: int(item[0])))}


def peak_lengths(lengths: dict[str, int]) -> dict[str, int]:
    """Short answers except the longest phase: the peak (every row of that phase at full length
    at once) is kept, at a fraction of the time."""
    longest = max(lengths, key=lambda phase: lengths[phase])
    return {phase: (n if phase == longest else min(n, 4)) for phase, n in lengths.items()}


def computed_memory_table(memory: Any, prefix_tokens: int, sizes: Sequence[int], *, slots: bool,
                          max_tokens: int) -> list[dict[str, Any]]:
    """The memory model's estimate of the worker per batch size (not a measurement): the image
    prefixes of a round, and one row per image holding up to ``max_tokens`` (the fixed-buffer
    loops: ``width_for(max_tokens)`` columns per row, whatever the answers' lengths)."""
    columns = width_for(max_tokens) if slots else max_tokens
    return [{"batch": b, "bytes": memory.worker_bytes(b, prefix_tokens=prefix_tokens, max_tokens=columns)}
            for b in sizes]


def print_report(console: Console, results: dict[str, Any]) -> None:
    kernels = results["kernels"]
    console.print(f"card: {results['card']} | torch {results['torch']} | transformers {results['transformers']} | "
                  f"fla {kernels['fla']['installed'] or 'not installed'} (in use: {kernels['fla']['in_use']}) | "
                  f"causal-conv1d {kernels['causal_conv1d']['installed'] or 'not installed'} "
                  f"(in use: {kernels['causal_conv1d']['in_use']})", highlight=False)
    table = Table(title=f"{results['shape']} ({results['params'] / 1e6:,.1f} M params, random), "
                        f"{results['image_size']} images, answers {results['lengths']}, {results['dtype']}, "
                        f"worker decode loop {results['decode_loop']}")
    for column in ("path", "batch", "images", "s/image", "images/s", "decode step ms (at batch)", "decode steps",
                   "peak memory"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, key, batch in (("reference: 4 single-turn calls", "reference", 1),
                             ("worker: encode once, 2 waves", "worker", results["batch_size"])):
        row = results.get(key, {})
        if "s_per_image" not in row:
            table.add_row(name, str(batch), "-", "OOM" if row.get("oom") else "-", "-", "-", "-", "-")
            continue
        timer = row["timer"]
        # The step time at the path's own batch size: the worker's tail steps run fewer rows.
        step_ms = timer["decode_step_ms_by_batch"].get(str(batch), timer["decode_step_ms"])
        table.add_row(name, str(batch), str(row["images"]), f"{row['s_per_image']:.3f}"
                      + (" (extrap.)" if row.get("extrapolated") else ""), f"{row['images_per_s']:.3f}",
                      str(step_ms), str(timer["decode_steps"]), _fmt_bytes(row["peak_memory"]))
    console.print(table)
    if "speedup" in results:
        console.print(f"speedup (reference / worker): {results['speedup']:.2f}x", highlight=False)
    if "single_image" in results:
        console.print(f"one image alone on the worker path: {results['single_image']['seconds']:.3f} s",
                      highlight=False)
    probe = results.get("loop_probe")
    if probe and "loops" in probe:
        loops = Table(title=f"decode loops, same {probe['rows']} rows x {probe['tokens']} tokens "
                            f"(greedy tokens equal in {probe['rows_equal']} of {probe['rows']} rows)")
        for column in ("loop", "decode step ms", "decode steps", "s", "rows equal to its own first run"):
            loops.add_column(column, justify="left" if column == "loop" else "right")
        for name, row in probe["loops"].items():
            loops.add_row(name, str(row["decode_step_ms"]), str(row["decode_steps"]), f"{row['seconds']:.3f}",
                          f"{row['rows_repeated']} of {probe['rows']}")
        console.print(loops)
        differing = sorted(i for i in probe["first_difference"] if i is not None)
        if differing:
            console.print(f"rows that differ first differ at token {differing[0]} (earliest), "
                          f"{differing[len(differing) // 2]} (median)", highlight=False)
        if probe["step_ratio"]:
            console.print(f"decode step, {' / '.join(reversed(list(probe['loops'])))}: {probe['step_ratio']:.2f}x",
                          highlight=False)
    elif probe:
        console.print("loop probe: out of memory", highlight=False)
    console.print(f"model build {results['build_s']:.1f} s, warm-up {results['warmup_s']:.1f} s, "
                  f"total {results['elapsed_s']:.1f} s", highlight=False)
    sweep = results.get("memory_sweep")
    computed = {row["batch"]: row["bytes"] for row in results["computed_memory"]}
    sweep_note = f", sweep lengths {sweep['lengths']}" if sweep else ""
    mem = Table(title="worker memory by batch size, decode buffers for the service's largest request "
                      f"({results['service_request_tokens']} tokens{sweep_note}; computed: weights + caches, "
                      "no activations)")
    mem.add_column("batch", justify="right")
    mem.add_column("computed", justify="right")
    mem.add_column("measured peak", justify="right")
    measured = {row["batch"]: row for row in sweep["rows"]} if sweep else {}
    for b in sorted(set(computed) | set(measured)):
        row = measured.get(b, {})
        shown = ("OOM" if row.get("oom") else row.get("skipped") or _fmt_bytes(row.get("peak_memory"))) \
            if row else "-"
        mem.add_row(str(b), _size(computed[b]) if b in computed else "-", shown)
    console.print(mem)
    goals = results["targets"]
    for key, what in (("s_per_image", "worker s/image"), ("single_image_s", "one image alone, s")):
        goal = goals[key]
        verdict = "no verdict (not the 4B shape on a GPU, or not measured)" if goal["met"] is None \
            else "met" if goal["met"] else "NOT met"
        console.print(f"target {what} <= {goal['target']}: {verdict} ({goal['measured']})", highlight=False)
    if goals["fits_24gb_by_batch"]:
        console.print("fits a 24 GB card (measured reserved peak + 0.5 GiB context <= 22.5 GiB), by batch: "
                      + ", ".join(f"{b}: {'yes' if ok else 'no'}" for b, ok in goals["fits_24gb_by_batch"].items()),
                      highlight=False)
    for note in results["notes"]:
        console.print(f"note: {note}", highlight=False)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # A `timeout` kill sends SIGTERM first: exit through main's handler, which saves the JSON.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    main()
