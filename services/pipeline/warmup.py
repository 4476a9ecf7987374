"""A worker's first batch, before its first job.

On a GPU the first calls compile kernels (Triton's, for flash-linear-attention and xgrammar's
logit mask), capture the decode step's CUDA graphs and allocate the fixed decode buffers; the
first jobs would pay for all of it, and again whenever a longer job makes the buffers grow. A
fast kernel that imports but fails on the host would fail every job. The warm-up runs one short
batch shaped like the largest job the profile allows, with as many rows as the worker decodes
at once, and switches a failing fast kernel back to PyTorch's before any job meets it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image

from services.models.kernels import kernel_status, retry_with_torch_kernels
from services.pipeline import grammars
from services.pipeline.batching import GenRequest
from services.pipeline.engine import Engine
from services.pipeline.profile import Profile

log = logging.getLogger(__name__)

WarmUpSetting = Literal["auto", "on", "off"]
ANSWER_TOKENS = 2  # enough for a decode step after the prefill


@dataclass(frozen=True)
class WarmUpReport:
    seconds: float
    rows: int
    reserve_tokens: int  # the longest request the fixed decode buffers now hold
    kernels: dict[str, dict[str, Any]]  # kernel_status() after the warm-up
    kernel_error: str | None  # why the fast kernels were replaced by PyTorch's, if they were


def should_warm_up(setting: WarmUpSetting, device: torch.device) -> bool:
    """``auto``: on CUDA, where the first calls compile and capture; the CPU has nothing to do."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def longest_prompt(profile: Profile) -> str:
    """The longest phase prompt a job can send: every view label and class filled in."""
    filled = (template.replace("{labels}", ", ".join(profile.view_labels))
              .replace("{classes}", ", ".join(profile.classes))
              .replace("{max_points}", str(profile.limits.max_polygon_points))
              for template in profile.prompts.model_dump().values())
    return max(filled, key=len)


def largest_request(engine: Engine, profile: Profile, *, prefix_tokens: int | None = None) -> int:
    """Tokens of the longest request a job can make: the prefix of the largest image (a square
    at ``max_side``; ``prefix_tokens`` when already known), the longest phase prompt, the
    largest answer budget. The fixed decode buffers are sized by budgets, not by the answers'
    actual lengths."""
    if prefix_tokens is None:
        side = profile.image.max_side
        prefix_tokens = engine.prefix_tokens(Image.new("RGB", (side, side)))
    return (prefix_tokens + int(engine.suffix_ids(longest_prompt(profile)).shape[1])
            + max(profile.max_new_tokens.model_dump().values()))


def warm_up(engine: Engine, profile: Profile, *, rows: int) -> WarmUpReport:
    """One batch of ``rows`` short answers on a largest-size image, the decode buffers sized for
    the largest request (largest image, longest prompt, largest answer budget). A failure with
    fast kernels in use (other than running out of memory) switches them to PyTorch's and runs
    the batch again; any other failure, or a second one, is raised: the worker cannot serve."""
    started = time.perf_counter()
    reserve, kernel_error = retry_with_torch_kernels(lambda: _run(engine, profile, rows),
                                                     reset=engine.release_slots)
    report = WarmUpReport(seconds=round(time.perf_counter() - started, 3), rows=rows, reserve_tokens=reserve,
                          kernels=kernel_status(), kernel_error=kernel_error)
    log.info("warm-up: %d rows in %.1f s, decode buffers for requests of %d tokens, kernels %s",
             rows, report.seconds, reserve, report.kernels)
    return report


def _run(engine: Engine, profile: Profile, rows: int) -> int:
    side = profile.image.max_side
    image = Image.new("RGB", (side, side), (96, 96, 96))  # the largest image: the longest prefix
    prefix = engine.encode_images([image, image])[0]  # the batched encode, as a wave runs it
    reserve = largest_request(engine, profile, prefix_tokens=int(prefix.input_ids.shape[1]))
    classify = engine.compile(grammars.classify_grammar(profile.view_labels, profile.max_new_tokens.classify))
    # One grammar-bound row (compiles the logit mask), the others free, every one forced to
    # its length so the decode steps run at ``rows`` rows.
    prompt = longest_prompt(profile)
    classify_prompt = profile.prompts.classify.replace("{labels}", ", ".join(profile.view_labels))
    requests = [GenRequest(prefix=prefix, prompt=prompt if i else classify_prompt,
                           grammar=None if i else classify, max_new_tokens=ANSWER_TOKENS,
                           decoding=profile.decoding, seed=0, min_new_tokens=0 if i == 0 else ANSWER_TOKENS)
                for i in range(rows)]
    engine.generate_many(requests, max_batch=rows, reserve_tokens=reserve)
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)  # a kernel's asynchronous failure surfaces here
    return reserve
