"""Parsing the model's raw text: lenient about form, strict about content, never raising."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.pipeline.parsing import INTERPRETATION_FIELDS, parse_phase, repair_trailing_commas
from services.pipeline.profile import Profile

BRAIN = ["Brain", "CSP", "LV"]
GOOD_INTERPRETATION = {f: f"{f} text" for f in INTERPRETATION_FIELDS}


def detect(raw: str, **kw: Any) -> Any:
    return parse_phase("detect", raw, allowed_labels=kw.pop("allowed_labels", BRAIN), **kw)


# --- whole-document problems ---------------------------------------------------------------


@pytest.mark.parametrize("raw", ["not json at all", "[{]", '{"label": ', "", "   "])
def test_malformed_output_is_invalid_not_raised(raw: str) -> None:
    result = detect(raw)
    assert not result.ok
    assert result.detail


def test_malformed_json_detail_names_the_position() -> None:
    result = parse_phase("interpret", '{"imaging_plane" "x"}', allowed_labels=[])
    assert not result.ok
    assert result.detail is not None and result.detail.startswith("not valid JSON at char 17")


def test_unknown_phase() -> None:
    result = parse_phase("map", "[]", allowed_labels=BRAIN)
    assert not result.ok and "unknown phase" in (result.detail or "")


def test_empty_list_is_a_valid_detect_result() -> None:
    result = detect("[]")
    assert result.ok and result.value == [] and result.rejected == [] and result.detail is None


def test_think_block_and_code_fence_are_stripped() -> None:
    raw = '<think>\n\n</think>\n\n```json\n[{"bbox_2d": [10, 20, 300, 400], "label": "Brain"}]\n```'
    result = detect(raw)
    assert result.ok
    assert result.value == [{"label": "Brain", "bbox_2d": [10.0, 20.0, 300.0, 400.0]}]


def test_end_of_turn_token_is_stripped() -> None:
    result = parse_phase("classify", '{"label": "FL"}<|im_end|>', allowed_labels=[], view_labels=["FL"])
    assert result.ok and result.value == "FL"


def test_non_empty_think_block_is_stripped_and_noted() -> None:
    result = detect('<think>the brain is central</think>[{"bbox_2d": [1, 2, 3, 4], "label": "LV"}]')
    assert result.ok and "think" in (result.detail or "")


def test_unterminated_think_block_is_invalid() -> None:
    result = detect("<think>\nlooking at the image and")
    assert not result.ok and "think" in (result.detail or "")


def test_trailing_commas_are_repaired() -> None:
    raw = '[{"bbox_2d": [1, 2, 30, 40,], "label": "Brain",}, ]'
    result = detect(raw)
    assert result.ok
    assert result.value == [{"label": "Brain", "bbox_2d": [1.0, 2.0, 30.0, 40.0]}]
    assert "trailing commas" in (result.detail or "")


def test_trailing_comma_repair_leaves_strings_alone() -> None:
    text, changed = repair_trailing_commas('{"a": "x, ]", "b": "q\\", }",}')
    assert changed
    assert json.loads(text) == {"a": "x, ]", "b": 'q", }'}


def test_prose_around_the_json_is_ignored() -> None:
    result = detect('Here are the structures: [{"bbox_2d": [1, 2, 3, 4], "label": "CSP"}] Done.')
    assert result.ok and result.value == [{"label": "CSP", "bbox_2d": [1.0, 2.0, 3.0, 4.0]}]


def test_truncated_list_keeps_complete_items() -> None:
    raw = '[{"bbox_2d": [1, 2, 3, 4], "label": "Brain"}, {"bbox_2d": [5, 6, 7'
    result = detect(raw)
    assert result.ok
    assert result.value == [{"label": "Brain", "bbox_2d": [1.0, 2.0, 3.0, 4.0]}]
    assert "truncated" in (result.detail or "")


def test_single_object_is_read_as_a_list() -> None:
    result = detect('{"bbox_2d": [1, 2, 3, 4], "label": "LV"}')
    assert result.ok and result.value == [{"label": "LV", "bbox_2d": [1.0, 2.0, 3.0, 4.0]}]


# --- items ---------------------------------------------------------------------------------


def test_box_2d_alias() -> None:
    result = detect('[{"box_2d": [100, 200, 300, 400], "label": "LV"}]')
    assert result.ok and result.value == [{"label": "LV", "bbox_2d": [100.0, 200.0, 300.0, 400.0]}]


def test_unknown_label_is_rejected_with_reason_and_others_kept() -> None:
    raw = '[{"bbox_2d": [1, 2, 3, 4], "label": "Brain"}, {"bbox_2d": [1, 2, 3, 4], "label": "spleen"}]'
    result = detect(raw)
    assert result.ok
    assert [i["label"] for i in result.value] == ["Brain"]
    assert result.rejected == ["item 2: label 'spleen' was not asked for"]


def test_label_case_is_canonicalised() -> None:
    result = detect('[{"bbox_2d": [1, 2, 3, 4], "label": "brain"}]')
    assert result.ok and result.value[0]["label"] == "Brain"


def test_all_items_rejected_is_invalid() -> None:
    result = detect('[{"bbox_2d": [1, 2, 3, 4], "label": "spleen"}, "junk"]')
    assert not result.ok
    assert result.value == []
    assert len(result.rejected) == 2 and "not an object" in result.rejected[1]


@pytest.mark.parametrize(
    ("value", "kept"),
    [(1000, 1000.0), (1005, 1000.0), (1010, 1000.0), (-5, 0.0), (-10, 0.0), (0, 0.0), (999.5, 999.5)],
)
def test_small_coordinate_excursions_are_clamped(value: float, kept: float) -> None:
    result = detect(json.dumps([{"bbox_2d": [1, 2, value, 400], "label": "Brain"}]))
    assert result.ok and result.value[0]["bbox_2d"][2] == kept


@pytest.mark.parametrize("value", ["1011", "-11", "5000", '"500"', "true", "NaN", "Infinity", "null"])
def test_bad_coordinates_reject_the_item(value: str) -> None:
    result = detect('[{"bbox_2d": [1, 2, ' + value + ', 400], "label": "Brain"}]')
    assert not result.ok
    assert result.rejected and "bbox_2d" in result.rejected[0]


def test_clamp_tolerance_follows_the_scale() -> None:
    result = detect('[{"bbox_2d": [1, 2, 100.5, 40], "label": "Brain"}]', scale=100)
    assert result.ok and result.value[0]["bbox_2d"][2] == 100.0
    assert not detect('[{"bbox_2d": [1, 2, 102, 40], "label": "Brain"}]', scale=100).ok


@pytest.mark.parametrize("box", ["[1, 2, 3]", '"1,2,3,4"', "{}"])
def test_malformed_box_rejects_the_item(box: str) -> None:
    result = detect('[{"bbox_2d": ' + box + ', "label": "Brain"}]')
    assert not result.ok and result.rejected


def test_detect_item_without_box_is_rejected() -> None:
    assert detect('[{"label": "Brain"}]').rejected == ["item 1: missing bbox_2d"]


def test_exact_duplicates_and_item_limit() -> None:
    item = {"bbox_2d": [1, 2, 3, 4], "label": "Brain"}
    other = {"bbox_2d": [5, 6, 7, 8], "label": "LV"}
    third = {"bbox_2d": [5, 6, 7, 9], "label": "LV"}
    result = detect(json.dumps([item, item, other, third]), max_items=2)
    assert result.ok and len(result.value) == 2
    assert result.rejected == ["item 2: duplicate of item 1", "item 4: over the limit of 2 items"]


def test_segment_items() -> None:
    raw = json.dumps(
        [
            {"label": "Brain", "mask": [[1, 1], [900, 1], [500, 800]]},  # no box: allowed
            {"label": "Brain", "bbox_2d": [1, 1, 9, 9], "mask": [1, 1, 9, 1, 5, 8]},  # flat mask
            {"label": "Brain", "bbox_2d": [1, 1, 9, 9]},  # no mask
            {"label": "Brain", "mask": [[1, 1, 1], [2, 2, 2], [3, 3, 3]]},  # not pairs
        ]
    )
    result = parse_phase("segment", raw, allowed_labels=BRAIN)
    assert result.ok
    assert result.value == [
        {"label": "Brain", "mask": [[1.0, 1.0], [900.0, 1.0], [500.0, 800.0]]},
        {"label": "Brain", "bbox_2d": [1.0, 1.0, 9.0, 9.0], "mask": [[1.0, 1.0], [9.0, 1.0], [5.0, 8.0]]},
    ]
    assert result.rejected == ["item 3: missing mask", "item 4: mask point is not [x, y]"]


def test_keypoint_items() -> None:
    raw = json.dumps(
        [
            {"label": "NTKpoints", "bbox_2d": [1, 1, 9, 9], "keypoints": [[2, 3, 2], [5000, -7, 0], [4, 5]]},
            {"label": "NTKpoints", "bbox_2d": [1, 1, 9, 9]},
        ]
    )
    result = parse_phase("keypoints", raw, allowed_labels=["NTKpoints"])
    assert result.ok
    # A v=0 point's coordinates are meaningless and zeroed; [x, y] without v is visible.
    assert result.items[0]["keypoints"] == [[2.0, 3.0, 2.0], [0.0, 0.0, 0.0], [4.0, 5.0, 2.0]]
    assert result.rejected == ["item 2: missing keypoints"]


# --- interpret -----------------------------------------------------------------------------


def test_interpret_ok_and_extra_keys_ignored() -> None:
    doc = {**GOOD_INTERPRETATION, "confidence": "high"}
    result = parse_phase("interpret", json.dumps(doc), allowed_labels=[])
    assert result.ok and result.value == GOOD_INTERPRETATION


def test_interpret_missing_fields_are_named() -> None:
    doc = {k: v for k, v in GOOD_INTERPRETATION.items() if k not in ("gestational_age", "image_quality")}
    result = parse_phase("interpret", json.dumps(doc), allowed_labels=[])
    assert not result.ok
    assert result.detail == "missing fields: gestational_age, image_quality"


def test_interpret_custom_field_list(profile: Profile) -> None:
    result = parse_phase("interpret", '{"a": "x"}', allowed_labels=[], fields=["a"])
    assert result.ok and result.value == {"a": "x"}
    assert list(profile.interpretation_fields) == list(INTERPRETATION_FIELDS)


def test_interpret_non_text_fields() -> None:
    doc: dict[str, Any] = {**GOOD_INTERPRETATION, "gestational_age": 22, "image_quality": None}
    result = parse_phase("interpret", json.dumps(doc), allowed_labels=[])
    assert not result.ok and (result.detail or "").startswith("fields are not text: image_quality (null)")
    doc["image_quality"] = ["good", "no artefacts"]
    result = parse_phase("interpret", json.dumps(doc), allowed_labels=[])
    assert result.ok and isinstance(result.value, dict)
    assert result.value["gestational_age"] == "22"
    assert result.value["image_quality"] == "good; no artefacts"


def test_interpret_must_be_an_object() -> None:
    result = parse_phase("interpret", '["a", "b"]', allowed_labels=[])
    assert not result.ok and "object" in (result.detail or "")


# --- classify ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ('{"label": "BPD_PLANE"}', "BPD_PLANE"),
        ('{"label": "bpd_plane"}', "BPD_PLANE"),
        ('{"label": "V SIGN"}', "V sign"),
        ('{"label": " Aorta "}', "Aorta"),
        ("FL_PLANE", "FL_PLANE"),
        ('"flows"', "Flows"),
    ],
)
def test_classify_canonical_label(profile: Profile, raw: str, label: str) -> None:
    result = parse_phase("classify", raw, allowed_labels=[], view_labels=profile.view_labels)
    assert result.ok and result.value == label


@pytest.mark.parametrize("raw", ['{"label": "Femur"}', '{"view": "FL"}', '{"label": 3}', "a femur view"])
def test_classify_unknown_label_is_invalid(profile: Profile, raw: str) -> None:
    result = parse_phase("classify", raw, allowed_labels=[], view_labels=profile.view_labels)
    assert not result.ok and result.detail


def test_classify_falls_back_to_allowed_labels() -> None:
    assert parse_phase("classify", '{"label": "fl"}', allowed_labels=["FL"]).value == "FL"


# --- never raises --------------------------------------------------------------------------

PHASES = ["interpret", "classify", "detect", "segment", "keypoints", "nonsense"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.sampled_from(BRAIN),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(
        st.sampled_from(["label", "bbox_2d", "box_2d", "mask", "keypoints", "imaging_plane", "x"]),
        children,
        max_size=5,
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(phase=st.sampled_from(PHASES), raw=st.text(alphabet=st.characters(), max_size=200))
def test_arbitrary_text_never_raises(phase: str, raw: str) -> None:
    result = parse_phase(phase, raw, allowed_labels=BRAIN, view_labels=["FL"])
    assert isinstance(result.ok, bool)
    assert result.ok or result.detail


@settings(max_examples=300, deadline=None)
@given(phase=st.sampled_from(PHASES), doc=json_values, noise=st.sampled_from(["", ",", "]", "}", "<think>"]))
def test_arbitrary_json_never_raises(phase: str, doc: Any, noise: str) -> None:
    raw = json.dumps(doc) + noise
    result = parse_phase(phase, raw, allowed_labels=BRAIN, view_labels=["FL"])
    assert result.ok or result.detail
    if result.ok and phase in ("detect", "segment", "keypoints"):
        assert isinstance(result.value, list)
        for item in result.value:
            assert item["label"] in BRAIN
            coords = list(item.get("bbox_2d", [])) + [c for p in item.get("mask", []) for c in p]
            assert all(0 <= c <= 1000 for c in coords)


def test_deep_nesting_does_not_raise() -> None:
    assert not detect("[" * 100_000).ok
