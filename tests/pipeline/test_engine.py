"""One image encoding per image, and exactly what separate single-turn chats would compute."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.models.loader import LoadedModel
from services.pipeline import grammars
from services.pipeline.engine import Engine, resize_longest_side
from services.pipeline.profile import Profile


def _image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _phase_requests(profile: Profile) -> list[tuple[str, str, grammars.PhaseGrammar]]:
    tokens, limits = profile.max_new_tokens, profile.limits
    detect = ["Brain", "CSP", "LV"]
    kp = ["CRL_KP", "ScaleBarKpoints"]
    return [
        ("interpret", profile.prompts.interpret,
         grammars.interpret_grammar(profile.interpretation_fields, limits, tokens.interpret)),
        ("classify", profile.prompts.classify.replace("{labels}", ", ".join(profile.view_labels)),
         grammars.classify_grammar(profile.view_labels, tokens.classify)),
        ("detect", profile.prompts.detect.replace("{classes}", ", ".join(detect)),
         grammars.items_grammar("detect", detect, limits, tokens.detect)),
        ("keypoints", profile.prompts.keypoints.replace("{classes}", ", ".join(kp)),
         grammars.items_grammar("keypoints", kp, limits, tokens.keypoints)),
        ("segment", profile.prompts.segment.replace("{classes}", "Brain"),
         grammars.items_grammar("segment", ["Brain"], limits, tokens.segment)),
    ]


@pytest.mark.parametrize(("width", "height", "seed"), [(96, 64, 0), (200, 137, 1), (1300, 700, 2)])
def test_prefix_sharing_is_token_identical_to_single_turn_calls(
    loaded_tiny: LoadedModel, small_profile: Profile, width: int, height: int, seed: int
) -> None:
    engine = Engine(loaded_tiny, max_side=small_profile.image.max_side)
    image = _image(width, height, seed)
    prefix = engine.encode_image(image)
    # Reverse order on purpose: a phase must not see state left behind by another.
    for phase, prompt, grammar in reversed(_phase_requests(small_profile)):
        compiled = engine.compile(grammar)
        budget = getattr(small_profile.max_new_tokens, phase)
        shared = engine.generate(prefix, prompt, grammar=compiled, max_new_tokens=budget,
                                 decoding=small_profile.decoding)
        separate = engine.generate_single_turn(image, prompt, grammar=compiled, max_new_tokens=budget)
        assert shared.extra["input_ids"] == separate.extra["input_ids"], f"{phase}: prompt tokens differ"
        assert shared.token_ids == separate.token_ids, f"{phase}: generated tokens differ"
        assert shared.finished and separate.finished, f"{phase}: the grammar must let the answer finish"


def test_image_is_encoded_once_per_image(loaded_tiny: LoadedModel, small_profile: Profile) -> None:
    engine = Engine(loaded_tiny)
    calls: list[int] = []
    handle = loaded_tiny.core.model.visual.register_forward_hook(lambda *_: calls.append(1))
    try:
        prefix = engine.encode_image(_image(64, 64, 3))
        for _, prompt, grammar in _phase_requests(small_profile)[:3]:
            engine.generate(prefix, prompt, grammar=engine.compile(grammar),
                            max_new_tokens=200, decoding=small_profile.decoding)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_images_are_shrunk_to_the_longest_side_never_enlarged() -> None:
    assert resize_longest_side(Image.new("RGB", (2048, 1024)), 1024).size == (1024, 512)
    assert resize_longest_side(Image.new("RGB", (300, 200)), 1024).size == (300, 200)
