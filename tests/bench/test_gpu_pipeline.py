"""bench/gpu_pipeline.py on the CPU with the toy model: both paths run, figures are sane.

The GPU figures themselves need a GPU; this keeps the script that produces them working (the
GPU host gets one try at it) and checks the 4B shape's config and memory model, which need
none.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from services.models.kernels import kernel_status
from services.models.shapes import SHAPES, image_tokens, load_shape_json, memory_model, shape_config
from services.models.tiny import build_tokenizer
from services.pipeline.profile import load_profile
from tests.fake_kernels import break_fla, keep_kernel_bindings

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_pipeline.py"
LENGTHS = {"interpret": 8, "classify": 4, "detect": 8, "segment": 16}


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_pipeline", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load_script()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer(load_profile())


def _lengths_arg(lengths: dict[str, int]) -> str:
    return ",".join(f"{phase}={n}" for phase, n in lengths.items())


def test_tiny_run_measures_both_paths(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    results = bench.main(["--tiny", "--batch-size", "2", "--images", "2", "--size", "128x96",
                          "--lengths", _lengths_arg(LENGTHS), "--json", str(out),
                          "--memory-sweep", "1", "--sweep-lengths", "interpret=1,classify=1,detect=1,segment=2"])

    assert json.loads(out.read_text()) == json.loads(json.dumps(results))  # the JSON is the whole report
    assert results["card"].startswith("cpu") and results["shape"] == "tiny" and results["lengths"] == LENGTHS
    assert isinstance(results["kernels"]["fla"]["in_use"], bool)
    for path, images in (("worker", 2), ("reference", 1)):
        figures = results[path]
        assert figures["images"] == images
        # Forced lengths: every answer of every phase has exactly its budget, on both paths.
        assert figures["tokens"] == {phase: [n] * images for phase, n in LENGTHS.items()}
        assert figures["s_per_image"] > 0
        assert figures["images_per_s"] == pytest.approx(1 / figures["s_per_image"], rel=1e-2)
        assert figures["timer"]["decode_step_ms"] > 0
        assert figures["peak_memory"] is None  # CPU: no device allocator to ask
    assert results["reference"]["extrapolated"] is False
    assert set(results["reference"]["timer"]["decode_steps_by_batch"]) == {"1"}
    # Two images per round at batch 2: the worker decodes two rows at a time.
    assert "2" in results["worker"]["timer"]["decode_steps_by_batch"]
    assert results["worker"]["stopped"] is None and results["worker"]["rounds"] == 1
    assert results["speedup"] > 0
    single = results["single_image"]  # one image alone: both waves, at most two rows each
    assert single["seconds"] > 0 and set(single["timer"]["decode_steps_by_batch"]) <= {"1", "2"}
    assert results["speedup"] == pytest.approx(
        results["reference"]["s_per_image"] / results["worker"]["s_per_image"], rel=1e-2)
    sizes = [row["bytes"] for row in results["computed_memory"]]
    assert sizes == sorted(sizes) and sizes[0] > results["weight_bytes"]
    assert results["memory_sweep"]["rows"][0]["batch"] == 1 and results["memory_sweep"]["rows"][0]["seconds"] > 0
    # Sized as the service sizes its decode buffers: the largest image, prompt and answer budget.
    assert results["memory_sweep"]["reserve_tokens"] == results["service_request_tokens"] > 4096
    goals = results["targets"]
    # The toy model on the CPU: no verdict against the 4B's GPU targets, no device peaks.
    assert goals["s_per_image"]["met"] is None and goals["single_image_s"]["met"] is None
    assert goals["fits_24gb_by_batch"] == {}


def test_static_loop_run_probes_the_dynamic_loop(bench: ModuleType) -> None:
    """The fixed-buffer loop on the worker path (what a GPU runs, minus the graphs), then the
    probe: the same rows through the dynamic loop, step times of both, the same tokens."""
    from services.pipeline.slots import SlotStore

    original_step = SlotStore.step
    results = bench.main(["--tiny", "--batch-size", "3", "--images", "3", "--size", "96x64", "--decode", "static",
                          "--lengths", _lengths_arg(LENGTHS), "--probe-tokens", "6", "--no-warmup"])
    assert SlotStore.step is original_step  # the timer's instrumentation is removed
    assert results["decode_loop"] == "static" and results["graphs"] is False
    worker = results["worker"]
    assert worker["tokens"] == {phase: [n] * 3 for phase, n in LENGTHS.items()}
    assert worker["timer"]["decode_steps_by_batch"].get("3", 0) > 0  # slot steps are timed
    probe = results["loop_probe"]
    assert set(probe["loops"]) == {"static", "dynamic"}
    for loop in probe["loops"].values():
        assert loop["decode_steps"] == 5 and loop["decode_step_ms"] > 0  # 6 tokens: 5 one-token steps
    assert probe["rows_equal"] == probe["rows"] == 3  # float32 on the CPU: the loops agree exactly
    assert probe["first_difference"] == [None] * 3
    assert all(loop["rows_repeated"] == 3 for loop in probe["loops"].values())  # and each repeats itself
    assert probe["step_ratio"] == pytest.approx(
        probe["loops"]["dynamic"]["decode_step_ms"] / probe["loops"]["static"]["decode_step_ms"], rel=1e-2)


def test_warm_up_sizes_the_buffers_for_the_measured_rounds(bench: ModuleType) -> None:
    """Steady state: the warm-up's short answers leave buffers wide enough for the full answers,
    so no measured round grows them (on a GPU that would capture every graph again)."""
    lengths = {**LENGTHS, "segment": 300}  # past the buffers' spare columns (256)
    results = bench.main(["--tiny", "--decode", "static", "--batch-size", "2", "--images", "4", "--size", "64x64",
                          "--lengths", _lengths_arg(lengths), "--compare-loop", "none"])
    assert results["worker"]["rounds"] == 2 and results["worker"]["slots_rebuilt"] is False
    assert "loop_probe" not in results


def test_reference_and_sweep_start_without_the_worker_buffers(bench: ModuleType,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Every peak counts what is still allocated when it starts: the reference way and each
    sweep size must not count the worker path's fixed buffers as well (on the H200 run of
    2026-12-04 they added ~7 GiB to the reference's peak and to every size of the sweep)."""
    from services.pipeline.slots import SlotStore

    alive: list[int] = []
    original = bench._reset_peak

    def counting(device: Any) -> Any:
        gc.collect()
        alive.append(sum(isinstance(o, SlotStore) for o in gc.get_objects()))
        return original(device)

    monkeypatch.setattr(bench, "_reset_peak", counting)
    results = bench.main(["--tiny", "--decode", "static", "--batch-size", "2", "--images", "2", "--size", "64x64",
                          "--lengths", "interpret=3,classify=2,detect=2,segment=3", "--compare-loop", "none",
                          "--memory-sweep", "2,1", "--sweep-lengths", "interpret=1,classify=1,detect=1,segment=2"])
    assert [row["batch"] for row in results["memory_sweep"]["rows"]] == [1, 2]
    # The worker path runs on the buffers its warm-up made, as a worker does; the reference way
    # (a reference app has no such buffers) and each sweep size start without them.
    assert alive == [1, 0, 0, 0]


def test_time_budget_cuts_stages_short_and_extrapolates(bench: ModuleType) -> None:
    """Past the budget: the first worker round still runs, the rest is skipped, the reference
    stops at its first token and is extrapolated, and the run still reports."""
    results = bench.main(["--tiny", "--batch-size", "1", "--images", "2", "--size", "64x64", "--time-budget-s", "0",
                          "--no-warmup", "--lengths", "interpret=3,classify=2,detect=2,segment=3"])
    assert results["worker"]["images"] == 1 and results["worker"]["stopped"].startswith("time budget")
    reference = results["reference"]
    assert reference["extrapolated"] is True and reference["s_per_image"] > 0
    assert all(n < 3 for n in reference["tokens"]["interpret"])
    assert any("extrapolated" in note for note in results["notes"])


def test_failing_fast_kernels_fall_back_to_pytorch(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU host gets one try: a fast kernel that fails in the warm-up is replaced by
    PyTorch's, noted, and the run still measures both paths."""
    from transformers.models.qwen3_5 import modeling_qwen3_5 as qwen

    torch_chunk = break_fla(monkeypatch)
    assert kernel_status()["fla"]["in_use"] is True

    results = bench.main(["--tiny", "--batch-size", "2", "--images", "2", "--size", "64x64",
                          "--lengths", _lengths_arg(LENGTHS)])
    assert results["kernels"]["fla"]["in_use"] is False and qwen.torch_chunk_gated_delta_rule is torch_chunk
    assert "PassManager" in results["kernel_error"]
    assert any("PyTorch's used instead" in note for note in results["notes"])
    assert results["worker"]["tokens"] == {phase: [n] * 2 for phase, n in LENGTHS.items()}
    assert results["reference"]["s_per_image"] > 0


def test_other_warm_up_errors_end_the_run(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a fast kernel in use a warm-up failure is a bug, not the kernels': it is raised
    (and written into the JSON), not papered over."""
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("shape mismatch")

    keep_kernel_bindings(monkeypatch)  # --kernels torch rebinds them
    monkeypatch.setattr(bench.Bench, "reference_call", broken)
    with pytest.raises(ValueError, match="shape mismatch"):
        bench.main(["--tiny", "--batch-size", "1", "--images", "1", "--size", "64x64", "--no-warmup",
                    "--kernels", "torch", "--lengths", _lengths_arg(LENGTHS)])


def test_targets_judge_the_figures(bench: ModuleType) -> None:
    """The verdicts a GPU run prints: s/image and one image's latency against the issue's
    targets, and which measured batch sizes' reserved peaks (plus the CUDA context) fit a 24 GB card."""
    gib = 1024**3

    def peak(reserved: float) -> dict[str, int]:
        return {"allocated": int(reserved * gib) - gib, "reserved": int(reserved * gib)}

    results = {"shape": "qwen3_5-4b", "device": "cuda", "batch_size": 32,
               "worker": {"s_per_image": 0.41, "peak_memory": peak(14)},
               "single_image": {"seconds": 12.5},
               "memory_sweep": {"rows": [{"batch": 8, "peak_memory": peak(11)}, {"batch": 16, "peak_memory": peak(22)},
                                         {"batch": 48, "peak_memory": peak(22.01)}, {"batch": 64, "oom": True},
                                         {"batch": 96, "skipped": "time budget"}]}}
    goals = bench.targets(results)
    assert goals["s_per_image"] == {"target": 0.5, "measured": 0.41, "met": True}
    assert goals["single_image_s"] == {"target": 10.0, "measured": 12.5, "met": False}
    assert goals["fits_24gb_by_batch"] == {"8": True, "16": True, "32": True, "48": False, "64": False}
    assert bench.targets({"batch_size": 8})["s_per_image"]["met"] is None  # nothing measured: no verdict
    toy = bench.targets({**results, "shape": "tiny", "device": "cpu"})  # the targets are the 4B's on a GPU
    assert toy["s_per_image"]["met"] is None and toy["single_image_s"]["met"] is None


def test_first_difference(bench: ModuleType) -> None:
    assert bench.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert bench.first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert bench.first_difference([1, 2], [1, 2, 3]) == 2  # one stopped early


def test_parse_lengths(bench: ModuleType) -> None:
    assert bench.parse_lengths(_lengths_arg(bench.FULL_LENGTHS)) == bench.FULL_LENGTHS
    for bad in ("interpret=8", "interpret=0,classify=1,detect=1,segment=1", "draw=1"):
        with pytest.raises(Exception, match="length"):
            bench.parse_lengths(bad)
    assert bench.peak_lengths(bench.FULL_LENGTHS) == {"interpret": 4, "classify": 4, "detect": 4, "segment": 600}


def test_out_of_memory_is_survived_and_other_errors_are_not(bench: ModuleType) -> None:
    """An OOM in a worker round or a sweep size is recorded, not fatal; anything else is a bug."""
    import torch

    def oom() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def bug() -> None:
        raise ValueError("shape mismatch")

    cpu = torch.device("cpu")
    assert bench._survives_oom(oom, cpu) is False
    assert bench._survives_oom(lambda: None, cpu) is True
    with pytest.raises(ValueError):
        bench._survives_oom(bug, cpu)


def test_4b_shape_config(tokenizer: Any) -> None:
    """The shape file is the Qwen3.5-4B layout; the tokenizer's ids replace the real Qwen ids."""
    raw = load_shape_json("qwen3_5-4b")
    assert raw["image_token_id"] == 248056  # the stored file keeps the real Qwen3.5 ids
    config = shape_config("qwen3_5-4b", tokenizer)
    text: Any = config.text_config
    vision: Any = config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.head_dim, text.vocab_size) == (2560, 32, 256, 248320)
    assert text.layer_types == ["linear_attention", "linear_attention", "linear_attention", "full_attention"] * 8
    assert (vision.depth, vision.out_hidden_size) == (24, 2560)
    vocab = tokenizer.get_vocab()
    assert config.image_token_id == vocab["<|image_pad|>"] and text.eos_token_id == tokenizer.eos_token_id
    assert "tiny" in SHAPES and "qwen3_5-4b" in SHAPES


def test_4b_memory_model(tokenizer: Any) -> None:
    """Sizes computed from the config (meta device, no memory): ~4.5 B params, 9 GB of bf16."""
    memory = memory_model(shape_config("qwen3_5-4b", tokenizer))
    assert 4.4e9 < memory.params < 4.7e9 and memory.weight_bytes == 2 * memory.params
    assert (memory.full_layers, memory.linear_layers) == (8, 24)
    assert memory.kv_bytes_per_token == 8 * 2 * 4 * 256 * 2  # layers x (k, v) x kv heads x head_dim x bf16
    # fp32 recurrent state 32 heads x 128 x 128, plus a 4-wide bf16 conv state of 8192 channels, per layer
    assert memory.linear_state_bytes == 24 * (32 * 128 * 128 * 4 + 8192 * 4 * 2)
    assert memory.worker_bytes(2, prefix_tokens=800, max_tokens=1500) > memory.worker_bytes(1, prefix_tokens=800,
                                                                                             max_tokens=1500)
    assert image_tokens(1024, 768) == 768
