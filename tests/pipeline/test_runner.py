"""The five phases end to end on the tiny model: order, skips, HITL, validity of every answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from services.ingest import DecodedImage, decode_image
from services.models.loader import LoadedModel
from services.pipeline.engine import Engine, Generation
from services.pipeline.normalize import ImageGeometry
from services.pipeline.profile import Profile
from services.pipeline.runner import Pipeline, ResumeError, record_phase
from services.runtime import Runtime, analyze_bytes, load_runtime
from shared.schemas.results import Detection, Keypoints, PhaseName, ResultDocument, Segmentation
from shared.settings import Settings


@pytest.fixture(scope="module")
def pipeline(loaded_tiny: LoadedModel, small_profile: Profile) -> Pipeline:
    return Pipeline(Engine(loaded_tiny), small_profile, loaded_tiny.provenance)


@pytest.fixture(scope="module")
def sampling_pipeline(loaded_tiny: LoadedModel, small_profile: Profile) -> Pipeline:
    """Sampling at temperature 1 walks far more of each grammar than greedy decoding does."""
    profile = small_profile.model_copy(update={"decoding": small_profile.decoding.model_copy(
        update={"strategy": "sample", "temperature": 1.0, "top_p": 1.0})})
    return Pipeline(Engine(loaded_tiny), profile, loaded_tiny.provenance)


def _decoded(image: Image.Image) -> DecodedImage:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return decode_image(buffer.getvalue())


def _assert_geometry_inside(doc: ResultDocument) -> None:
    w, h = doc.image.width, doc.image.height
    annotations: list[Detection | Segmentation | Keypoints] = [*doc.detections, *doc.segmentations, *doc.keypoints]
    for ann in annotations:
        x, y, bw, bh = ann.bbox
        assert 0 <= x <= x + bw <= w and 0 <= y <= y + bh <= h
    for seg in doc.segmentations:
        for poly in seg.segmentation:
            assert all(0 <= px <= w for px in poly[0::2]) and all(0 <= py <= h for py in poly[1::2])
            assert seg.area >= 0
    for kp in doc.keypoints:
        pts = kp.keypoints
        assert all(0 <= px <= w for px in pts[0::3]) and all(0 <= py <= h for py in pts[1::3])
        assert kp.num_keypoints == sum(1 for v in pts[2::3] if v > 0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(33, 400), height=st.integers(33, 400), seed=st.integers(0, 2**32 - 1))
def test_constrained_answers_always_validate(sampling_pipeline: Pipeline, width: int, height: int,
                                              seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    doc = sampling_pipeline.analyze(_decoded(image))
    ResultDocument.model_validate(doc.model_dump())
    for name, report in doc.phases.items():
        assert report.status in ("ok", "skipped"), (name, report)
    assert doc.interpretation is not None and set(doc.interpretation) == set(
        sampling_pipeline.profile.interpretation_fields)
    assert doc.classification is not None and doc.classification.label in sampling_pipeline.profile.view_labels
    assert doc.mapping is not None
    _assert_geometry_inside(doc)


def test_phase_order_and_skips(pipeline: Pipeline) -> None:
    doc = pipeline.analyze(_decoded(Image.new("RGB", (120, 90), (30, 30, 30))))
    assert list(doc.phases)[:3] == ["interpret", "classify", "map"]
    assert doc.status == "succeeded" and doc.model.untrained is True
    map_detail = doc.phases["map"].detail
    assert doc.mapping is not None and map_detail is not None and map_detail.startswith(doc.mapping.tier)
    uses_keypoints = any(c in pipeline.profile.keypoint_classes for c in doc.mapping.detect_classes)
    skipped: PhaseName = "detect" if uses_keypoints else "keypoints"
    assert doc.phases[skipped].status == "skipped" and doc.phases[skipped].detail
    if not doc.mapping.segment_classes:
        assert doc.phases["segment"].status == "skipped"
        assert doc.phases["segment"].detail == "MAP gave no segment classes"
    for name in ("interpret", "classify"):
        assert doc.phases[name].raw, "the raw answer is kept for audit"


def test_hitl_stops_after_interpretation_and_resumes_without_recomputing(pipeline: Pipeline,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = _decoded(Image.new("RGB", (100, 100), (200, 10, 10)))
    waiting = pipeline.analyze(decoded, mode="hitl")
    assert waiting.status == "awaiting_review"
    assert waiting.phases["interpret"].status == "ok" and waiting.phases["classify"].status == "ok"
    assert all(waiting.phases[p].status == "skipped" for p in ("map", "detect", "segment", "keypoints"))

    # The saved state survives a JSON round trip (it is stored in a database between the steps).
    saved = ResultDocument.model_validate_json(waiting.model_dump_json())
    calls: list[str] = []
    original = pipeline.engine.generate_many

    def counting(requests, **kwargs):  # type: ignore[no-untyped-def]
        calls.extend(request.prompt for request in requests)
        return original(requests, **kwargs)

    monkeypatch.setattr(pipeline.engine, "generate_many", counting)
    done = pipeline.resume(decoded, saved, phases=["detect", "segment"], group="brain")
    assert done.status == "succeeded"
    assert done.mapping is not None and done.mapping.tier == "HITL" and done.mapping.group == "brain"
    assert done.mapping.detect_classes == ["Brain", "CSP", "LV"]
    assert done.interpretation == saved.interpretation and done.phases["interpret"] == saved.phases["interpret"]
    assert len(calls) == 2 and "Brain, CSP, LV" in calls[0] and "Outline" in calls[1]
    assert done.phases["detect"].status == "ok" and done.phases["segment"].status == "ok"

    with pytest.raises(ResumeError):
        pipeline.resume(decoded, done, phases=["detect"])
    with pytest.raises(ResumeError, match="unknown"):
        pipeline.resume(decoded, saved, phases=["detect"], group="no-such-group")


def test_hitl_reviewer_may_choose_keypoints_group(pipeline: Pipeline) -> None:
    decoded = _decoded(Image.new("RGB", (64, 80), (0, 90, 10)))
    saved = pipeline.analyze(decoded, mode="hitl")
    done = pipeline.resume(decoded, saved, phases=["keypoints"], group="crl_kp")
    assert done.phases["keypoints"].status == "ok"
    assert done.phases["detect"].status == "skipped" and "keypoints" in (done.phases["detect"].detail or "")
    assert all(k.label in ("CRL_KP", "ScaleBarKpoints") for k in done.keypoints)


def test_bad_model_output_is_invalid_output_not_an_exception(small_profile: Profile) -> None:
    doc = ResultDocument.model_validate({
        "status": "running", "model": {"base": "b", "adapter": None, "revision": "r", "profile": "p",
                                       "untrained": True},
        "image": {"width": 10, "height": 10, "sha256": "0" * 64, "format": "png"}})
    geometry = ImageGeometry(width=10, height=10)
    cut = Generation(text='[{"bbox_2d":[1,2', token_ids=[1] * 5, finished=False, latency_ms=1.0)
    record_phase(doc, "detect", cut, labels=["head"], geometry=geometry, profile=small_profile, latency_ms=1.0)
    assert doc.phases["detect"].status == "invalid_output"
    assert "max_new_tokens" in (doc.phases["detect"].detail or "")
    assert doc.phases["detect"].raw == '[{"bbox_2d":[1,2'
    garbage = Generation(text="not json at all", token_ids=[1], finished=True, latency_ms=1.0)
    record_phase(doc, "interpret", garbage, labels=[], geometry=geometry, profile=small_profile, latency_ms=1.0)
    assert doc.phases["interpret"].status == "invalid_output" and doc.interpretation is None


@pytest.fixture(scope="module")
def runtime(tiny_model_dir: Path, small_profile_path: Path) -> Runtime:
    return load_runtime(Settings(model_dir=tiny_model_dir, profile=str(small_profile_path)))


def test_real_obstetric_dicom_end_to_end(runtime: Runtime) -> None:
    data = Path(str(get_testdata_file("examples_palette.dcm"))).read_bytes()
    doc = analyze_bytes(runtime, data)
    assert doc.status == "succeeded" and doc.model.untrained is True
    assert doc.image.format == "dicom" and (doc.image.width, doc.image.height) == (800, 350)
    assert doc.image.pixel_spacing_mm is not None
    assert all(r.status in ("ok", "skipped") for r in doc.phases.values())
    assert all(r.detail for r in doc.phases.values() if r.status == "skipped")
    _assert_geometry_inside(doc)


def test_settings_choose_the_decode_loop_and_rows(runtime: Runtime, tiny_model_dir: Path,
                                                 small_profile_path: Path) -> None:
    """FADA_DECODE_LOOP / FADA_DECODE_ROWS reach the engine; the fixed-buffer loop's document is
    the default (dynamic, on the CPU) one's."""
    static = load_runtime(Settings(model_dir=tiny_model_dir, profile=str(small_profile_path), decode_loop="static",
                                   decode_rows=3))
    assert (static.pipeline.engine.decode_loop, static.pipeline.max_batch) == ("static", 3)
    assert (runtime.pipeline.engine.decode_loop, runtime.pipeline.max_batch) == ("dynamic", 8)
    data = Path(str(get_testdata_file("examples_palette.dcm"))).read_bytes()
    docs = [analyze_bytes(each, data).model_dump() for each in (runtime, static)]
    for doc in docs:
        for report in doc["phases"].values():
            report.pop("latency_ms")
    assert docs[0] == docs[1]
