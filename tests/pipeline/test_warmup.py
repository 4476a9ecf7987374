"""The worker's warm-up: buffers sized for the largest job, a failing fast kernel replaced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from services.models import kernels
from services.models.kernels import kernel_status
from services.models.loader import LoadedModel, load_model, source_from_dir
from services.pipeline.engine import Engine
from services.pipeline.profile import Profile
from services.pipeline.runner import BatchItem, Pipeline
from services.pipeline.warmup import largest_request, longest_prompt, should_warm_up, warm_up
from services.runtime import load_runtime
from shared.schemas.results import ResultDocument
from shared.settings import Settings
from tests.fake_kernels import break_fla
from tests.pipeline.images import noise


def test_warm_up_sizes_the_buffers_for_the_largest_job(loaded_tiny: LoadedModel, small_profile: Profile) -> None:
    """After the warm-up, jobs of the largest image and of a small one decode in the same
    buffers: none grows them (on a GPU that would capture every graph again)."""
    engine = Engine(loaded_tiny, max_side=small_profile.image.max_side, decode_loop="static")
    report = warm_up(engine, small_profile, rows=3)
    store = engine.slots
    assert store is not None and store.capacity == 3
    side = small_profile.image.max_side
    # The largest prefix (a square at max_side: 32 px per token) plus the largest budget,
    # which is past the buffers' spare columns: without the reservation they would grow.
    assert report.reserve_tokens > (side // 32) ** 2 + max(small_profile.max_new_tokens.model_dump().values())
    assert store.width >= report.reserve_tokens and report.kernel_error is None and report.rows == 3

    pipeline = Pipeline(engine, small_profile, loaded_tiny.provenance, max_batch=3)
    for image in (noise(side, side, 0), noise(300, 200, 1)):
        doc = pipeline.analyze(image)
        assert isinstance(doc, ResultDocument) and doc.phases["interpret"].status == "ok"
        assert engine.slots is store


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (bench/gpu_check.sh runs it there)")
def test_warm_up_captures_the_graphs_once(tiny_model_dir: Path, small_profile: Profile) -> None:
    """On the GPU: the graphs are captured in the warm-up and replayed by the jobs after it."""
    loaded = load_model(source_from_dir(tiny_model_dir), profile_name="fada-skd-small", profile_version="test",
                        device="cuda")
    engine = Engine(loaded, max_side=small_profile.image.max_side, decode_loop="graphs")
    report = warm_up(engine, small_profile, rows=4)
    store = engine.slots
    assert store is not None and store.graphs and store.capture_error is None and report.kernel_error is None
    pipeline = Pipeline(engine, small_profile, loaded.provenance, max_batch=4)
    side = small_profile.image.max_side
    docs = pipeline.run_batch([BatchItem(noise(side, side, 0)), BatchItem(noise(300, 200, 1))])
    assert all(isinstance(doc, ResultDocument) for doc in docs) and engine.slots is store


def test_warm_up_replaces_a_failing_fast_kernel(loaded_tiny: LoadedModel, small_profile: Profile,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    torch_chunk = break_fla(monkeypatch)
    assert kernel_status()["fla"]["in_use"] is True
    engine = Engine(loaded_tiny, max_side=small_profile.image.max_side, decode_loop="static")
    report = warm_up(engine, small_profile, rows=2)
    assert report.kernel_error is not None and "PassManager" in report.kernel_error
    assert report.kernels["fla"]["in_use"] is False
    from transformers.models.qwen3_5 import modeling_qwen3_5 as qwen

    assert qwen.torch_chunk_gated_delta_rule is torch_chunk  # every loaded model now calls PyTorch's
    doc = Pipeline(engine, small_profile, loaded_tiny.provenance, max_batch=2).analyze(noise(64, 48, 2))
    assert isinstance(doc, ResultDocument) and doc.phases["interpret"].status == "ok"


def test_other_warm_up_failures_stop_the_worker(loaded_tiny: LoadedModel, small_profile: Profile,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a fast kernel to blame, a failing warm-up is raised: the worker cannot serve."""
    engine = Engine(loaded_tiny, max_side=small_profile.image.max_side)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("shape mismatch")

    monkeypatch.setattr(engine, "generate_many", broken)
    monkeypatch.setattr(kernels, "fast_kernels_in_use", lambda: False)  # as on a host without fla
    with pytest.raises(ValueError, match="shape mismatch"):
        warm_up(engine, small_profile, rows=2)


def test_warm_up_runs_on_cuda_unless_told() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [should_warm_up(s, cpu) for s in ("auto", "on", "off")] == [False, True, False]
    assert [should_warm_up(s, cuda) for s in ("auto", "on", "off")] == [True, True, False]


def test_longest_prompt_has_every_label_filled_in(small_profile: Profile) -> None:
    prompt = longest_prompt(small_profile)
    assert "{" + "classes}" not in prompt and all(c in prompt for c in small_profile.classes)


def test_largest_request_is_the_largest_image_prompt_and_budget(loaded_tiny: LoadedModel,
                                                                 small_profile: Profile) -> None:
    engine = Engine(loaded_tiny, max_side=small_profile.image.max_side)
    side = small_profile.image.max_side
    prefix = engine.encode_image(Image.new("RGB", (side, side)))
    suffix = engine.suffix_ids(longest_prompt(small_profile))
    budget = max(small_profile.max_new_tokens.model_dump().values())
    assert largest_request(engine, small_profile) == prefix.input_ids.shape[1] + suffix.shape[1] + budget


def test_runtime_warms_up_when_asked(tiny_model_dir: Path, small_profile_path: Path) -> None:
    """``FADA_WARMUP=on`` on the CPU: the worker's runtime is warmed before its first job."""
    runtime = load_runtime(Settings(model_dir=tiny_model_dir, profile=str(small_profile_path), warmup="on",
                                    decode_loop="static", decode_rows=2))
    assert runtime.warmup is not None and runtime.warmup.rows == 2
    store = runtime.pipeline.engine.slots
    assert store is not None and store.width >= runtime.warmup.reserve_tokens
    off = load_runtime(Settings(model_dir=tiny_model_dir, profile=str(small_profile_path), warmup="off"))
    assert off.warmup is None and off.pipeline.engine.slots is None
