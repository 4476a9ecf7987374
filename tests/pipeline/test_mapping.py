"""MAP: the P1..P5 cascade, its P3 special cases and the HITL group choice."""

from __future__ import annotations

import pytest

from services.pipeline.mapping import (
    MapDecision,
    UnknownGroup,
    map_group,
    map_structures,
    needs_keypoints,
    score_groups,
)
from services.pipeline.profile import MapTables, Profile
from shared.schemas.results import Mapping

NEUTRAL = {
    "anatomical_structures": "not assessable",
    "fetal_orientation": "not assessable",
    "imaging_plane": "not assessable",
    "biometric_measurements": "none reported",
    "gestational_age": "about 20 weeks",
    "image_quality": "fair",
    "normality_assessment": "no anomaly seen",
    "clinical_recommendations": "repeat scan",
}


def interp(**fields: str) -> dict[str, str]:
    """A full 8-field interpretation: neutral text except the fields given."""
    return {**NEUTRAL, **fields}


def test_neutral_interpretation_scores_nothing(tables: MapTables) -> None:
    # The other tests rely on the filler text being silent.
    assert not any(score_groups(NEUTRAL, tables).values())


# --- P1 ------------------------------------------------------------------------------------


def test_p1_specific_label_maps_directly(tables: MapTables) -> None:
    brainy_text = interp(imaging_plane="Four chamber view of the fetal heart")
    decision = map_structures("BPD_PLANE", brainy_text, tables)
    assert decision == MapDecision(["Brain", "CSP", "LV"], ["Brain"], "P1", None, decision.reason)
    assert "BPD_PLANE" in decision.reason


def test_p1_without_segment_entry_gives_none(tables: MapTables) -> None:
    decision = map_structures("FL_PLANE", None, tables)
    assert (decision.tier, decision.detect_classes, decision.segment_classes) == ("P1", ["legs"], None)


def test_decision_lists_are_copies(tables: MapTables) -> None:
    decision = map_structures("Flows", None, tables)
    decision.detect_classes.append("head")
    assert tables.classification_to_detect["Flows"] == ["artery", "liver", "stomach", "vein"]


# --- P2 ------------------------------------------------------------------------------------


def test_p2_plane_phrase_in_imaging_plane(tables: MapTables) -> None:
    text = interp(
        imaging_plane="Four chamber view of the fetal heart",
        anatomical_structures="heart with both atria and ventricles, thorax",
    )
    decision = map_structures("NO_PLANE", text, tables)
    assert (decision.tier, decision.group) == ("P2", "cardiac")
    assert decision.detect_classes == ["cardiac", "thorax"]
    assert decision.segment_classes == ["cardiac", "thorax"]
    assert "four chamber" in decision.reason


def test_p2_is_case_insensitive_and_reads_fetal_orientation(tables: MapTables) -> None:
    text = interp(fetal_orientation="Longitudinal View of Femur, fetus lying transverse")
    decision = map_structures(None, text, tables)
    assert (decision.tier, decision.group, decision.detect_classes) == ("P2", "femur", ["legs"])
    assert "fetal_orientation" in decision.reason


def test_p2_group_only_in_scoring_groups(tables: MapTables) -> None:
    # "body_full" is a scoring group name, not a routing group; it still resolves.
    decision = map_structures(None, interp(imaging_plane="Transverse AC plane at the stomach"), tables)
    assert (decision.tier, decision.group) == ("P2", "body_full")
    assert decision.detect_classes == ["abdomen", "arm", "head", "legs"]


# --- P3 ------------------------------------------------------------------------------------


def test_p3_keyword_scores_pick_brain(tables: MapTables) -> None:
    text = interp(
        imaging_plane="axial view through the fetal head",
        anatomical_structures="cerebral hemispheres, lateral ventricles and choroid plexus",
        biometric_measurements="BPD 52 mm, HC 190 mm",
    )
    decision = map_structures("NO_PLANE", text, tables)
    assert (decision.tier, decision.group) == ("P3", "brain")
    assert decision.detect_classes == ["Brain", "CSP", "LV"]
    assert "brain=" in decision.reason


def test_p3_alias_matches_at_the_edge_of_a_field(tables: MapTables) -> None:
    # " hc " only matches because the field text is padded with spaces.
    scores = score_groups(interp(biometric_measurements="HC"), tables)
    assert scores["brain"] == pytest.approx(3.0)


def test_p3_ties_go_to_the_first_group(tables: MapTables) -> None:
    text = interp(anatomical_structures="brain and heart")
    scores = score_groups(text, tables)
    assert scores["brain"] == scores["cardiac"] > 0
    assert map_structures(None, text, tables).group == "brain"


def test_p3_body_pose_yields_to_organ_words(tables: MapTables) -> None:
    text = interp(
        imaging_plane="transverse view of the fetal abdomen",
        anatomical_structures="fetal abdomen, arm and stomach",
        biometric_measurements="AC 180 mm",
    )
    scores = score_groups(text, tables)
    assert max(scores, key=lambda name: scores[name]) == "body_full"
    decision = map_structures(None, text, tables)
    assert (decision.tier, decision.group) == ("P3", "doppler")
    assert decision.detect_classes == ["artery", "liver", "stomach", "vein"]
    assert "organ words" in decision.reason


def test_p3_body_pose_stays_without_organ_words(tables: MapTables) -> None:
    text = interp(
        imaging_plane="transverse view of the fetal abdomen",
        anatomical_structures="fetal abdomen and arm",
        biometric_measurements="AC 180 mm",
    )
    assert map_structures(None, text, tables).group == "body_full"


def test_p3_organ_word_in_unweighted_field_does_not_override(tables: MapTables) -> None:
    text = interp(
        imaging_plane="transverse view of the fetal abdomen",
        image_quality="stomach shadowing limits the view",  # image_quality weighs 0
    )
    assert map_structures(None, text, tables).group == "body_full"


def test_p3_negative_measurement_phrase_dampens_and_changes_winner(tables: MapTables) -> None:
    base = {"anatomical_structures": "cerebellum and cisterna magna visible"}
    measured = interp(**base, biometric_measurements="Femur length 35 mm")
    unmeasured = interp(**base, biometric_measurements="Femur length not measurable")
    assert map_structures(None, measured, tables).group == "femur"
    assert score_groups(unmeasured, tables)["femur"] == pytest.approx(0.3 * 2)
    assert map_structures(None, unmeasured, tables).group == "brain"


def test_p3_keyword_fallback_when_no_group_scores(tables: MapTables) -> None:
    text = interp(anatomical_structures="banana-shaped structure in the posterior fossa")
    assert not any(score_groups(text, tables).values())
    decision = map_structures("NO_PLANE", text, tables)
    assert decision.tier == "P3"
    assert decision.group is None
    assert (decision.detect_classes, decision.segment_classes) == (["Brain", "CSP", "LV"], ["Brain"])
    assert "keyword fallback" in decision.reason


def test_p3_fallback_rules_are_tried_in_order(tables: MapTables) -> None:
    # "rump" (CRL rule) and the misspelt "cervex" (earlier pelvimetry rule) both match.
    text = interp(clinical_recommendations="review rump and cervex on the next visit")
    assert not any(score_groups(text, tables).values())
    assert map_structures(None, text, tables).detect_classes == ["fetal_head", "pubic_symphysis"]


# --- P4 and P5 -----------------------------------------------------------------------------


def test_p4_generic_label_own_mapping(tables: MapTables) -> None:
    decision = map_structures("head", NEUTRAL, tables)
    assert (decision.tier, decision.detect_classes, decision.segment_classes) == ("P4", ["head"], None)


def test_p4_without_interpretation(tables: MapTables) -> None:
    decision = map_structures("arms", None, tables)
    assert (decision.tier, decision.detect_classes) == ("P4", ["abdomen", "arm"])


def test_interpretation_beats_generic_label(tables: MapTables) -> None:
    decision = map_structures("head", interp(imaging_plane="nuchal translucency view"), tables)
    assert (decision.tier, decision.group) == ("P2", "nt_nasal")


@pytest.mark.parametrize("label", [None, "not-a-label"])
def test_p5_default(tables: MapTables, label: str | None) -> None:
    decision = map_structures(label, None, tables)
    assert decision.tier == "P5"
    assert decision.detect_classes == ["abdomen", "arm", "head", "legs"]
    assert decision.segment_classes is None


def test_p5_with_silent_interpretation(tables: MapTables) -> None:
    assert map_structures(None, NEUTRAL, tables).tier == "P5"


# --- HITL ----------------------------------------------------------------------------------


def test_map_group_every_routing_group(tables: MapTables) -> None:
    for name, group in tables.routing_groups.items():
        decision = map_group(name, tables)
        assert decision.tier == "HITL"
        assert decision.group == name
        assert decision.detect_classes == group.detect
        assert decision.segment_classes == group.segment
        assert Mapping.model_validate(decision.to_model().model_dump()).tier == "HITL"


def test_map_group_unknown(tables: MapTables) -> None:
    with pytest.raises(UnknownGroup, match="brain"):
        map_group("spleen", tables)
    assert issubclass(UnknownGroup, ValueError)


def test_map_group_accepts_scoring_group_name(tables: MapTables) -> None:
    assert map_group("body_full", tables).detect_classes == ["abdomen", "arm", "head", "legs"]


def test_needs_keypoints(profile: Profile) -> None:
    assert needs_keypoints(map_group("crl_kp", profile.map).detect_classes, profile.keypoint_classes)
    assert needs_keypoints(["NT", "NTKpoints"], profile.keypoint_classes)
    assert not needs_keypoints(map_group("crl", profile.map).detect_classes, profile.keypoint_classes)
    assert not needs_keypoints([], profile.keypoint_classes)
