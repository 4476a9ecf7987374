"""Batching across jobs: every item of a batch gets exactly what it gets alone (greedy)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from services.ingest import DecodedImage
from services.models.loader import LoadedModel, load_model, source_from_dir
from services.pipeline import batching, grammars
from services.pipeline.batching import GenRequest
from services.pipeline.caches import cut_left
from services.pipeline.engine import Engine, ImagePrefix
from services.pipeline.profile import Profile
from services.pipeline.runner import BatchItem, Pipeline, ResumeError
from shared.schemas.results import ResultDocument
from tests.pipeline.images import noise

RESUME_PHASES = ("detect", "segment")
# Smaller still than SMALL_BUDGETS (tests/conftest.py): the random model writes every string to
# its bound, and these budgets shrink the bounds so the whole file stays quick.
TINY_BUDGETS = {"interpret": 220, "classify": 32, "detect": 60, "keypoints": 100, "segment": 100}


def _comparable(doc: ResultDocument) -> dict[str, Any]:
    """The whole document except timings."""
    data = doc.model_dump()
    for report in data["phases"].values():
        report.pop("latency_ms")
    return data


@pytest.fixture(scope="module")
def tiny_profile(small_profile: Profile) -> Profile:
    budgets = small_profile.max_new_tokens.model_copy(update=TINY_BUDGETS)
    return small_profile.model_copy(update={"max_new_tokens": budgets})


@pytest.fixture(scope="module")
def engine(loaded_tiny: LoadedModel, tiny_profile: Profile) -> Engine:
    return Engine(loaded_tiny, max_side=tiny_profile.image.max_side)


@pytest.fixture(scope="module")
def pipeline(engine: Engine, tiny_profile: Profile, loaded_tiny: LoadedModel) -> Pipeline:
    # max_batch below the 4 requests of the first wave: rows are refilled as others finish.
    return Pipeline(engine, tiny_profile, loaded_tiny.provenance, max_batch=3)


@pytest.fixture(scope="module")
def images() -> dict[str, DecodedImage]:
    return {
        "small": noise(40, 36, 0),
        "wide": noise(1100, 420, 1),  # longer than max_side (1024): shrunk before encoding
        "square": noise(96, 96, 2),
        "mid": noise(200, 137, 3),
    }


@pytest.fixture(scope="module")
def waiting(pipeline: Pipeline, images: dict[str, DecodedImage]) -> ResultDocument:
    """A saved HITL document, as the database returns it."""
    doc = pipeline.analyze(images["square"], mode="hitl")
    return ResultDocument.model_validate_json(doc.model_dump_json())


@pytest.fixture(scope="module")
def items(images: dict[str, DecodedImage], waiting: ResultDocument) -> list[BatchItem]:
    return [
        BatchItem(images["small"]),
        BatchItem(images["wide"], mode="hitl"),
        BatchItem(images["square"], resume_state=waiting, phases=RESUME_PHASES, group="brain"),
        BatchItem(images["mid"], resume_state=waiting, phases=RESUME_PHASES),  # not this document's image
    ]


@pytest.fixture(scope="module")
def alone(pipeline: Pipeline, images: dict[str, DecodedImage], waiting: ResultDocument) -> list[ResultDocument]:
    """What the first three items get one at a time."""
    return [
        pipeline.analyze(images["small"]),
        pipeline.analyze(images["wide"], mode="hitl"),
        pipeline.resume(images["square"], waiting, phases=RESUME_PHASES, group="brain"),
    ]


def _images_per_call(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], calls: list[int]) -> None:
    grid = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
    calls.append(int(grid.shape[0]))


@pytest.fixture(scope="module")
def batch_run(pipeline: Pipeline, items: list[BatchItem], loaded_tiny: LoadedModel
              ) -> tuple[list[ResultDocument | Exception], list[int]]:
    """The batch's results and the images of each vision-tower call."""
    calls: list[int] = []
    handle = loaded_tiny.core.model.visual.register_forward_pre_hook(
        lambda module, args, kwargs: _images_per_call(module, args, kwargs, calls), with_kwargs=True)
    try:
        results = pipeline.run_batch(items)
    finally:
        handle.remove()
    return results, calls


def test_every_item_gets_what_it_gets_alone(batch_run: tuple[list[ResultDocument | Exception], list[int]],
                                             alone: list[ResultDocument]) -> None:
    results, _ = batch_run
    assert [getattr(doc, "status", None) for doc in results[:3]] == ["succeeded", "awaiting_review", "succeeded"]
    for index, (batched, single) in enumerate(zip(results[:3], alone, strict=True)):
        assert isinstance(batched, ResultDocument), (index, batched)
        assert {name: report.raw for name, report in batched.phases.items()} == {
            name: report.raw for name, report in single.phases.items()}, f"item {index}: answers differ"
        assert _comparable(batched) == _comparable(single), f"item {index}: documents differ"
    resumed = results[2]
    assert isinstance(resumed, ResultDocument)
    assert resumed.phases["detect"].status == "ok" and resumed.phases["segment"].status == "ok"


def test_a_bad_item_fails_alone(batch_run: tuple[list[ResultDocument | Exception], list[int]]) -> None:
    results, _ = batch_run
    assert isinstance(results[3], ResumeError) and "does not match" in str(results[3])
    assert all(isinstance(doc, ResultDocument) for doc in results[:3])


def test_each_image_is_encoded_once(batch_run: tuple[list[ResultDocument | Exception], list[int]]) -> None:
    _, vision_calls = batch_run
    # Wave 1: the two fresh images in one call; wave 2: the resumed one. The bad item's image
    # is never encoded.
    assert vision_calls == [2, 1]


def test_a_failed_batch_encode_is_redone_image_by_image(pipeline: Pipeline, images: dict[str, DecodedImage],
                                                        alone: list[ResultDocument],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One image that cannot be encoded fails its own job only, not the others of its call."""
    engine = pipeline.engine
    encode_image = engine.encode_image
    broken = images["square"].image

    def failing_one(image: Image.Image) -> ImagePrefix:
        if image is broken:
            raise RuntimeError("vision tower failed")
        return encode_image(image)

    def failing_many(many: list[Image.Image]) -> list[ImagePrefix]:
        if any(image is broken for image in many):
            raise RuntimeError("vision tower failed")
        raise AssertionError("only the call with the broken image is expected here")

    monkeypatch.setattr(engine, "encode_image", failing_one)
    monkeypatch.setattr(engine, "encode_images", failing_many)
    small, square = pipeline.run_batch([BatchItem(images["small"]), BatchItem(images["square"])])
    assert isinstance(small, ResultDocument) and _comparable(small) == _comparable(alone[0])
    assert isinstance(square, RuntimeError) and "vision tower failed" in str(square)


def test_a_failing_generation_fails_only_its_phase(pipeline: Pipeline, images: dict[str, DecodedImage],
                                                   waiting: ResultDocument, monkeypatch: pytest.MonkeyPatch) -> None:
    original = pipeline.engine.generate_many

    def failing(requests: list[GenRequest], **kwargs: Any) -> Any:
        if any("Outline" in request.prompt for request in requests):  # the segment prompt
            raise RuntimeError("boom")
        return original(requests, **kwargs)

    monkeypatch.setattr(pipeline.engine, "generate_many", failing)
    square = images["square"]
    detect, segment = pipeline.run_batch([
        BatchItem(square, resume_state=waiting, phases=("detect",), group="brain"),
        BatchItem(square, resume_state=waiting, phases=("segment",), group="brain"),
    ])
    assert isinstance(detect, ResultDocument) and detect.phases["detect"].status == "ok"
    assert isinstance(segment, ResultDocument) and segment.status == "succeeded"
    assert segment.phases["segment"].status == "error" and segment.phases["segment"].detail == "RuntimeError: boom"


def test_the_reference_path_still_runs_phase_by_phase(pipeline: Pipeline, images: dict[str, DecodedImage],
                                                      waiting: ResultDocument) -> None:
    """share_prefix=False re-encodes the image per phase and gets the same answers."""
    reference = Pipeline(pipeline.engine, pipeline.profile, pipeline.provenance, share_prefix=False)
    shared, separate = (p.resume(images["square"], waiting, phases=("detect",), group="brain")
                        for p in (pipeline, reference))
    assert _comparable(shared) == _comparable(separate)


# -- the engine ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefixes(engine: Engine, images: dict[str, DecodedImage]) -> list[ImagePrefix]:
    return [engine.encode_image(images[name].image) for name in ("small", "square", "mid")]


def _forward_rows(loaded: LoadedModel, *, decode: bool) -> Iterator[list[int]]:
    """Rows of every forward of the language model: one-token (decode) forwards, or
    multi-token (prefill) ones."""
    sizes: list[int] = []

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        inputs = kwargs["inputs_embeds"] if kwargs.get("inputs_embeds") is not None else kwargs["input_ids"]
        if (inputs.shape[1] == 1) == decode:
            sizes.append(int(inputs.shape[0]))

    handle = loaded.core.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()


@pytest.fixture
def decode_batch_sizes(loaded_tiny: LoadedModel) -> Iterator[list[int]]:
    """Batch size of every one-token (decode) forward of the language model."""
    yield from _forward_rows(loaded_tiny, decode=True)


def _free(prefix: ImagePrefix, profile: Profile, length: int) -> GenRequest:
    """No grammar, exactly ``length`` tokens."""
    return GenRequest(prefix=prefix, prompt=profile.prompts.interpret, grammar=None, max_new_tokens=length,
                      decoding=profile.decoding, seed=0, min_new_tokens=length)


def test_finished_rows_leave_the_batch(engine: Engine, prefixes: list[ImagePrefix], tiny_profile: Profile,
                                       decode_batch_sizes: list[int]) -> None:
    requests = [_free(prefix, tiny_profile, length) for prefix, length in zip(prefixes, (3, 9, 6), strict=True)]
    batched = engine.generate_many(requests, max_batch=8)
    # A row needs one forward per token but its last: 2 steps with 3 rows, 3 with 2, 3 with 1.
    assert decode_batch_sizes == [3, 3, 2, 2, 2, 1, 1, 1]
    assert [len(g.token_ids) for g in batched] == [3, 9, 6]
    assert not any(g.finished for g in batched)
    for request, generation in zip(requests, batched, strict=True):
        single = engine.generate(request.prefix, request.prompt, grammar=None, max_new_tokens=request.max_new_tokens,
                                 decoding=request.decoding, min_new_tokens=request.min_new_tokens)
        assert generation.token_ids == single.token_ids


def test_min_new_tokens_forces_the_length(engine: Engine, images: dict[str, DecodedImage],
                                          prefixes: list[ImagePrefix], tiny_profile: Profile) -> None:
    request = _free(prefixes[0], tiny_profile, 24)
    shared = engine.generate(request.prefix, request.prompt, grammar=None, max_new_tokens=24,
                             decoding=tiny_profile.decoding, min_new_tokens=24)
    reference = engine.generate_single_turn(images["small"].image, request.prompt, grammar=None, max_new_tokens=24,
                                            min_new_tokens=24)
    assert len(shared.token_ids) == 24 and not shared.finished
    assert shared.token_ids == reference.token_ids
    # Below the budget, stop tokens are allowed again once the minimum is reached.
    longer = engine.generate(request.prefix, request.prompt, grammar=None, max_new_tokens=40,
                             decoding=tiny_profile.decoding, min_new_tokens=5)
    assert 5 <= len(longer.token_ids) <= 40


def test_more_requests_than_max_batch(engine: Engine, prefixes: list[ImagePrefix], tiny_profile: Profile,
                                      decode_batch_sizes: list[int]) -> None:
    classes = ["Brain", "CSP", "LV"]
    tokens, limits = tiny_profile.max_new_tokens, tiny_profile.limits
    phases = [
        (tiny_profile.prompts.classify.replace("{labels}", ", ".join(tiny_profile.view_labels)),
         grammars.classify_grammar(tiny_profile.view_labels, tokens.classify), tokens.classify),
        (tiny_profile.prompts.detect.replace("{classes}", ", ".join(classes)),
         grammars.items_grammar("detect", classes, limits, tokens.detect), tokens.detect),
    ]
    requests = [GenRequest(prefix=prefix, prompt=prompt, grammar=engine.compile(grammar), max_new_tokens=budget,
                           decoding=tiny_profile.decoding, seed=0)
                for prefix in prefixes for prompt, grammar, budget in phases]
    batched = engine.generate_many(requests, max_batch=2)
    assert max(decode_batch_sizes) == 2
    for request, generation in zip(requests, batched, strict=True):
        single = engine.generate(request.prefix, request.prompt, grammar=request.grammar,
                                 max_new_tokens=request.max_new_tokens, decoding=request.decoding)
        assert generation.token_ids == single.token_ids and generation.finished == single.finished
        assert generation.extra["input_ids"] == single.extra["input_ids"]


def test_sampled_rows_keep_their_own_seed(engine: Engine, prefixes: list[ImagePrefix],
                                          tiny_profile: Profile) -> None:
    sample = tiny_profile.decoding.model_copy(update={"strategy": "sample", "temperature": 1.0, "top_p": 0.9})
    requests = [GenRequest(prefix=prefix, prompt=tiny_profile.prompts.interpret, grammar=None, max_new_tokens=12,
                           decoding=sample, seed=seed) for seed, prefix in enumerate(prefixes)]
    batched = engine.generate_many(requests)
    for request, generation in zip(requests, batched, strict=True):
        single = engine.generate(request.prefix, request.prompt, grammar=None, max_new_tokens=12,
                                 decoding=sample, seed=request.seed)
        assert generation.token_ids == single.token_ids


@pytest.fixture
def prefill_batch_sizes(loaded_tiny: LoadedModel) -> Iterator[list[int]]:
    """Rows of every multi-token (prefill) forward of the language model after the image prefixes."""
    yield from _forward_rows(loaded_tiny, decode=False)


def test_prefill_many_equals_one_prefill_per_row(engine: Engine, prefixes: list[ImagePrefix],
                                                 tiny_profile: Profile) -> None:
    """Three images of different prefix lengths after one phase prompt: left-padded into one
    forward, each row's next-token logits and cache equal to its own prefill; the prefixes
    themselves are left untouched (every later phase starts from them)."""
    suffix = engine.suffix_ids(tiny_profile.prompts.interpret)
    lengths = [int(prefix.input_ids.shape[1]) for prefix in prefixes]
    assert len(set(lengths)) == 3
    before = [[layer.keys.clone() for layer in prefix.cache.layers if getattr(layer, "keys", None) is not None]
              for prefix in prefixes]
    cache, pads, logits = engine.prefill_many(prefixes, suffix.expand(len(prefixes), -1))
    assert pads == [max(lengths) - n for n in lengths] and logits.shape[0] == 3
    for row, prefix in enumerate(prefixes):
        alone_cache, alone_logits = engine.prefill(prefix, suffix)
        torch.testing.assert_close(logits[row:row + 1], alone_logits, rtol=0, atol=1e-4)
        for batched, single in zip(cache.layers, alone_cache.layers, strict=True):
            if getattr(single, "keys", None) is not None:
                torch.testing.assert_close(batched.keys[row:row + 1, :, pads[row]:], single.keys, rtol=0, atol=1e-4)
            else:
                torch.testing.assert_close(batched.recurrent_states[0][row:row + 1], single.recurrent_states[0],
                                           rtol=0, atol=1e-4)
    for prefix, kept in zip(prefixes, before, strict=True):
        now = [layer.keys for layer in prefix.cache.layers if getattr(layer, "keys", None) is not None]
        assert all(torch.equal(a, b) for a, b in zip(now, kept, strict=True))


def test_encode_images_equals_one_encode_per_image(engine: Engine, images: dict[str, DecodedImage],
                                                   prefixes: list[ImagePrefix], tiny_profile: Profile,
                                                   loaded_tiny: LoadedModel) -> None:
    """Three images of different sizes in one vision-tower call and one left-padded forward:
    each prefix (ids, rope delta, every cache tensor, what a phase then computes from it)
    equals the image's own encoding."""
    calls: list[int] = []
    handle = loaded_tiny.core.model.visual.register_forward_hook(lambda *_: calls.append(1))
    try:
        together = engine.encode_images([images[name].image for name in ("small", "square", "mid")])
    finally:
        handle.remove()
    assert calls == [1]
    suffix = engine.suffix_ids(tiny_profile.prompts.interpret)
    for batched, single in zip(together, prefixes, strict=True):
        assert torch.equal(batched.input_ids, single.input_ids) and batched.model_size == single.model_size
        assert torch.equal(batched.rope_deltas, single.rope_deltas)
        assert int(batched.cache.get_seq_length()) == int(single.cache.get_seq_length()) == single.input_ids.shape[1]
        for ours, theirs in zip(batched.cache.layers, single.cache.layers, strict=True):
            pairs = ([(ours.keys, theirs.keys), (ours.values, theirs.values)] if hasattr(theirs, "keys") else
                     [(ours.conv_states[0], theirs.conv_states[0]),
                      (ours.recurrent_states[0], theirs.recurrent_states[0])])
            for a, b in pairs:
                torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
        torch.testing.assert_close(engine.prefill(batched, suffix)[1], engine.prefill(single, suffix)[1],
                                   rtol=0, atol=1e-4)


def _counts(cache: Any) -> set[int]:
    """The token count every layer reports: KV width for full attention, the linear layers'
    own count (transformers 5.25 and later, where ``get_seq_length()`` reads layer 0's)."""
    counts = {int(layer.keys.shape[2]) for layer in cache.layers if getattr(layer, "keys", None) is not None}
    return counts | {int(layer.cumulative_length_linear) for layer in cache.layers
                     if hasattr(layer, "cumulative_length_linear")}


def test_row_operations_keep_every_layers_token_count(engine: Engine, prefixes: list[ImagePrefix],
                                                      tiny_profile: Profile) -> None:
    """Stacking, cutting padding and taking rows out keep every layer's count of seen tokens
    equal to the KV width: positions of the next forward come from it."""
    assert all(_counts(prefix.cache) == {prefix.input_ids.shape[1]} for prefix in prefixes)
    suffix = engine.suffix_ids(tiny_profile.prompts.interpret)
    cache, pads, _ = engine.prefill_many(prefixes, suffix.expand(len(prefixes), -1))
    width = max(int(prefix.input_ids.shape[1]) for prefix in prefixes) + suffix.shape[1]
    assert _counts(cache) == {width} and int(cache.get_seq_length()) == width
    cut_left(cache, min(pads) + 1)  # one column more than the shortest padding: just the count is checked
    assert _counts(cache) == {width - min(pads) - 1}
    assert all(_counts(prefix.cache) == {prefix.input_ids.shape[1]} for prefix in prefixes)  # untouched


def test_requests_of_one_prompt_are_prefilled_together(engine: Engine, prefixes: list[ImagePrefix],
                                                       tiny_profile: Profile, prefill_batch_sizes: list[int],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [_free(prefix, tiny_profile, 3) for prefix in prefixes * 2]  # six rows, one prompt
    expected = [engine.generate(r.prefix, r.prompt, grammar=None, max_new_tokens=3, decoding=r.decoding,
                                min_new_tokens=3).token_ids for r in requests]
    prefill_batch_sizes.clear()
    assert [g.token_ids for g in engine.generate_many(requests, max_batch=8)] == expected
    assert prefill_batch_sizes == [6]
    monkeypatch.setattr(engine, "prefill_rows", 4)  # a bound on the rows of one prefill
    prefill_batch_sizes.clear()
    assert [g.token_ids for g in engine.generate_many(requests, max_batch=8)] == expected
    assert prefill_batch_sizes == [4, 2]


def test_rejects_an_empty_batch_bound(engine: Engine, prefixes: list[ImagePrefix], tiny_profile: Profile) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        engine.generate_many([_free(prefixes[0], tiny_profile, 2)], max_batch=0)
    assert engine.generate_many([]) == []


# -- the fixed-buffer decode loop (services.pipeline.slots) -------------------------------------


@pytest.fixture(scope="module")
def static_engine(loaded_tiny: LoadedModel, tiny_profile: Profile) -> Engine:
    return Engine(loaded_tiny, max_side=tiny_profile.image.max_side, decode_loop="static")


def _mixed_requests(engine: Engine, prefixes: list[ImagePrefix], profile: Profile) -> list[GenRequest]:
    """Grammar-bound and free answers of three images, of different lengths."""
    tokens, limits = profile.max_new_tokens, profile.limits
    classify = (profile.prompts.classify.replace("{labels}", ", ".join(profile.view_labels)),
                grammars.classify_grammar(profile.view_labels, tokens.classify), tokens.classify)
    detect = (profile.prompts.detect.replace("{classes}", "Brain, CSP"),
              grammars.items_grammar("detect", ["Brain", "CSP"], limits, tokens.detect), tokens.detect)
    requests = [GenRequest(prefix=prefix, prompt=prompt, grammar=engine.compile(grammar), max_new_tokens=budget,
                           decoding=profile.decoding, seed=0)
                for prefix in prefixes for prompt, grammar, budget in (classify, detect)]
    return requests + [_free(prefix, profile, length) for prefix, length in zip(prefixes, (5, 17, 11), strict=True)]


def test_static_loop_gives_the_dynamic_answers(engine: Engine, static_engine: Engine, prefixes: list[ImagePrefix],
                                               tiny_profile: Profile, decode_batch_sizes: list[int]) -> None:
    requests = _mixed_requests(engine, prefixes, tiny_profile)
    for max_batch in (1, 3, 8):
        dynamic = engine.generate_many(requests, max_batch=max_batch)
        decode_batch_sizes.clear()
        static = static_engine.generate_many(requests, max_batch=max_batch)
        assert max(decode_batch_sizes) == min(max_batch, len(requests))  # rows really decoded together
        for one, other in zip(dynamic, static, strict=True):
            assert (one.token_ids, one.finished, one.extra) == (other.token_ids, other.finished, other.extra)
    store = static_engine.slots
    assert store is not None and store.used == 0  # every slot freed at the end


def test_static_step_logits_match_the_dynamic_step(engine: Engine, static_engine: Engine,
                                                   prefixes: list[ImagePrefix], tiny_profile: Profile,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The logits themselves, not just the argmax: rows of different lengths after a few steps."""
    requests = [_free(prefix, tiny_profile, 6) for prefix in prefixes]
    original = batching.pick_tokens
    seen: dict[str, list[torch.Tensor]] = {"dynamic": [], "static": []}
    for name, each in (("dynamic", engine), ("static", static_engine)):
        def recording(eng: Engine, rows: Any, logits: torch.Tensor, picks: list[torch.Tensor] = seen[name]
                      ) -> list[int]:
            if len(rows) == len(requests):
                picks.append(logits.float().clone())
            return original(eng, rows, logits)

        monkeypatch.setattr(batching, "pick_tokens", recording)
        each.generate_many(requests, max_batch=3)
    assert len(seen["dynamic"]) == len(seen["static"]) == 6
    for one, other in zip(seen["dynamic"], seen["static"], strict=True):
        torch.testing.assert_close(one, other, rtol=0, atol=1e-4)


def test_columns_move_when_the_buffer_is_full(loaded_tiny: LoadedModel, engine: Engine, prefixes: list[ImagePrefix],
                                             tiny_profile: Profile) -> None:
    """No spare columns: rows refilled while others run push the write column to the end, and
    the used columns are moved back; the answers do not change."""
    tight = Engine(loaded_tiny, max_side=tiny_profile.image.max_side, decode_loop="static")
    tight.slot_margin = 0
    requests = [_free(prefix, tiny_profile, length)
                for prefix, length in zip(prefixes * 3, (40, 9, 31, 12, 44, 7, 25, 38, 3), strict=True)]
    static = tight.generate_many(requests, max_batch=2)
    assert tight.slots is not None and tight.slots.moves > 0
    dynamic = engine.generate_many(requests, max_batch=2)
    assert [g.token_ids for g in static] == [g.token_ids for g in dynamic]


def test_steps_attend_over_the_live_columns_only(loaded_tiny: LoadedModel, engine: Engine,
                                                 prefixes: list[ImagePrefix], tiny_profile: Profile,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Buffers much wider than the rows (as the service's budgets make them): each step attends
    over the narrowest extent that holds its write column, the used columns move left when that
    narrows the steps, and neither changes an answer or a logit."""
    from services.pipeline import slots

    monkeypatch.setattr(slots, "FIRST_EXTENT", 32)
    wide = Engine(loaded_tiny, max_side=tiny_profile.image.max_side, decode_loop="static")
    requests = [_free(prefix, tiny_profile, length)
                for prefix, length in zip(prefixes * 3, (140, 9, 301, 12, 44, 7, 25, 238, 3), strict=True)]
    wide.generate_many(requests[:1], max_batch=2, reserve_tokens=2000)  # 2304 columns: extents 32..2048, 2304
    store = wide.slots
    assert store is not None and store.extents == [32, 64, 128, 256, 512, 1024, 2048, 2304]
    spans: list[int] = []
    forward = store._forward

    def recording(rows: int, extent: int) -> torch.Tensor:
        spans.append(extent)
        return forward(rows, extent)

    monkeypatch.setattr(store, "_forward", recording)
    moves = store.moves
    logits_seen: dict[str, list[torch.Tensor]] = {"dynamic": [], "static": []}
    original = batching.pick_tokens
    answers = {}
    for name, each in (("dynamic", engine), ("static", wide)):
        def keep_logits(eng: Engine, rows: Any, logits: torch.Tensor, seen: list[torch.Tensor] = logits_seen[name]
                        ) -> list[int]:
            seen.append(logits.float().clone())
            return original(eng, rows, logits)

        monkeypatch.setattr(batching, "pick_tokens", keep_logits)
        answers[name] = [g.token_ids for g in each.generate_many(requests, max_batch=2)]
    assert answers["static"] == answers["dynamic"]
    for one, other in zip(logits_seen["dynamic"], logits_seen["static"], strict=True):
        torch.testing.assert_close(one, other, rtol=0, atol=1e-4)
    longest = max(int(r.prefix.input_ids.shape[1]) + int(wide.suffix_ids(r.prompt).shape[1]) + r.max_new_tokens
                  for r in requests)
    # The live span (at most the longest row), rounded up to an extent: never the whole width.
    assert wide.slots is store and max(spans) <= 2 * longest < store.width, sorted(set(spans))
    assert len(set(spans)) > 1 and store.moves > moves  # several extents; moved left to narrow them


def test_the_buffers_are_kept_and_grown_only_when_needed(loaded_tiny: LoadedModel, prefixes: list[ImagePrefix],
                                                         tiny_profile: Profile) -> None:
    static_engine = Engine(loaded_tiny, max_side=tiny_profile.image.max_side, decode_loop="static")
    static_engine.generate_many([_free(prefixes[0], tiny_profile, 4)], max_batch=4)
    store = static_engine.slots
    static_engine.generate_many([_free(prefix, tiny_profile, 4) for prefix in prefixes], max_batch=2)
    assert static_engine.slots is store  # fewer rows, same width: the same buffers
    static_engine.generate_many([_free(prefix, tiny_profile, 4) for prefix in prefixes * 3], max_batch=6)
    grown = static_engine.slots
    assert grown is not store and grown is not None and grown.capacity == 6


def test_a_failed_step_frees_the_slots(static_engine: Engine, prefixes: list[ImagePrefix], tiny_profile: Profile,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [_free(prefix, tiny_profile, 5) for prefix in prefixes]
    expected = static_engine.generate_many(requests, max_batch=3)
    store = static_engine.slots
    assert store is not None
    with monkeypatch.context() as patch:
        patch.setattr(store, "step", lambda *_: (_ for _ in ()).throw(RuntimeError("device lost")))
        with pytest.raises(RuntimeError, match="device lost"):
            static_engine.generate_many(requests, max_batch=3)
    assert store.used == 0
    again = static_engine.generate_many(requests, max_batch=3)
    assert static_engine.slots is store
    assert [g.token_ids for g in again] == [g.token_ids for g in expected]


def test_a_batch_on_the_static_loop_equals_the_single_runs(static_engine: Engine, tiny_profile: Profile,
                                                           loaded_tiny: LoadedModel, items: list[BatchItem],
                                                           alone: list[ResultDocument]) -> None:
    """Whole documents: the static loop's batch against the dynamic loop's one-at-a-time runs."""
    pipeline = Pipeline(static_engine, tiny_profile, loaded_tiny.provenance, max_batch=3)
    results = pipeline.run_batch(items[:3])
    for index, (batched, single) in enumerate(zip(results, alone, strict=True)):
        assert isinstance(batched, ResultDocument), (index, batched)
        assert _comparable(batched) == _comparable(single), f"item {index}: documents differ"


class _NoHostReads(TorchDispatchMode):
    """Fails on any op that reads a tensor value on the host (``.item()``, ``int()`` or ``bool()``
    of a tensor, ``nonzero``): on CUDA each is a synchronisation, which a graph capture refuses.
    (``.tolist()`` of a CPU tensor reads its memory without an op: not seen here.)"""

    READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default, torch.ops.aten.nonzero.default,
             torch.ops.aten.equal.default, torch.ops.aten.is_nonzero.default)

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in self.READS:
            raise AssertionError(f"the decode step reads a tensor on the host: {func}")
        self.ops += 1
        return func(*args, **(kwargs or {}))


def test_the_static_step_never_reads_tensors_on_the_host(static_engine: Engine, prefixes: list[ImagePrefix],
                                                         tiny_profile: Profile,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """What a CUDA graph capture needs, checked on the CPU: the whole step, every step."""
    static_engine.generate_many([_free(prefixes[0], tiny_profile, 2)], max_batch=3)
    store = static_engine.slots
    assert store is not None
    original = store.step
    watched: list[int] = []

    def step(tokens: Any, positions: Any) -> torch.Tensor:
        with _NoHostReads() as mode:
            logits = original(tokens, positions)
        watched.append(mode.ops)
        return logits

    monkeypatch.setattr(store, "step", step)
    requests = _mixed_requests(static_engine, prefixes, tiny_profile)
    static_engine.generate_many(requests, max_batch=3)
    assert len(watched) > 10 and min(watched) > 100  # the mode saw every step's ops


def test_stop_suppression_covers_the_holding_rows_without_host_reads() -> None:
    """Stops are masked in the rows that must go on, in one pass; a row whose grammar allows
    nothing but a stop keeps them. No host read: on a GPU each would stall every step."""
    scores = torch.zeros(4, 10)
    scores[2, :] = float("-inf")
    scores[2, [3, 7]] = torch.tensor([1.5, 0.5])  # only the stops are allowed in row 2
    before = scores.clone()
    with _NoHostReads():
        batching.suppress_stops(scores, [0, 2, 3], [3, 7])
    assert torch.isneginf(scores[[0, 3]][:, [3, 7]]).all()
    assert scores[2].tolist() == before[2].tolist()  # stuck row: its stops kept
    assert scores[1].tolist() == before[1].tolist()  # not holding: untouched
    others = [c for c in range(10) if c not in (3, 7)]
    assert scores[:, others].tolist() == before[:, others].tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (bench/gpu_check.sh runs it there)")
def test_graph_loop_gives_the_static_answers(tiny_model_dir: Path, tiny_profile: Profile,
                                            images: dict[str, DecodedImage]) -> None:
    """Graph replays against the same step run eagerly and against the dynamic loop, on the GPU.
    In float32: a graph runs its bucket's rows (4 for 3 running), the eager step the running
    rows, and bf16 rounding of the two GEMM shapes could flip a near-tie of the random model."""
    loaded = load_model(source_from_dir(tiny_model_dir), profile_name="fada-skd-small", profile_version="test",
                        dtype="float32", device="cuda")
    engines = {loop: Engine(loaded, max_side=tiny_profile.image.max_side, decode_loop=loop)
               for loop in ("graphs", "static", "dynamic")}
    prefixes = [engines["graphs"].encode_image(images[name].image) for name in ("small", "square", "mid")]
    requests = _mixed_requests(engines["graphs"], prefixes, tiny_profile)
    answers = {loop: [g.token_ids for g in engine.generate_many(requests, max_batch=5)]
               for loop, engine in engines.items()}
    store = engines["graphs"].slots
    assert store is not None and store.graphs and store.capture_error is None
    assert answers["graphs"] == answers["static"] == answers["dynamic"]
    again = [g.token_ids for g in engines["graphs"].generate_many(requests, max_batch=5)]
    assert again == answers["graphs"] and engines["graphs"].slots is store  # buffers and graphs kept


def test_graphs_need_cuda(loaded_tiny: LoadedModel) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the graph path is checked on a GPU by bench/gpu_pipeline.py
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Engine(loaded_tiny, decode_loop="graphs")
    assert Engine(loaded_tiny).decode_loop == "dynamic"  # auto on the CPU
