"""Geometry: model coordinates to COCO shapes in original-image pixels."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.pipeline.normalize import (
    ImageGeometry,
    build_annotations,
    build_detections,
    build_keypoints,
    build_segmentations,
    coco_bbox,
    coco_keypoints,
    coco_polygon,
    to_model,
    to_pixels,
)
from services.pipeline.profile import Profile
from shared.schemas.results import Detection, Keypoints, Segmentation

EPS = 1e-9  # float slack for sums such as x + w

geometries = st.builds(
    ImageGeometry,
    width=st.integers(1, 5000),
    height=st.integers(1, 5000),
    scale=st.sampled_from([1000, 999, 100]),
)


@st.composite
def geometry_and_coords(draw: st.DrawFn, n: int, spill: float = 0.2) -> tuple[ImageGeometry, list[float]]:
    """A geometry and n model coordinates, some a little outside 0..scale (clamping is tested)."""
    g = draw(geometries)
    lo, hi = -spill * g.scale, (1 + spill) * g.scale
    coords = draw(st.lists(st.floats(lo, hi, allow_nan=False), min_size=n, max_size=n))
    return g, coords


def inside(x: float, y: float, g: ImageGeometry) -> bool:
    return 0 <= x <= g.width and 0 <= y <= g.height


def box_inside(box: tuple[float, float, float, float], g: ImageGeometry) -> bool:
    x, y, w, h = box
    return inside(x, y, g) and w >= 0 and h >= 0 and x + w <= g.width + EPS and y + h <= g.height + EPS


# --- points --------------------------------------------------------------------------------


def test_to_pixels_examples() -> None:
    g = ImageGeometry(width=800, height=600)
    assert to_pixels(500, 500, g) == (400.0, 300.0)
    assert to_pixels(1000, 0, g) == (800.0, 0.0)
    assert to_pixels(1001, -3, g) == (800.0, 0.0)  # clamped into the image


def test_geometry_validates() -> None:
    with pytest.raises(ValueError):
        ImageGeometry(width=0, height=10)


@settings(max_examples=300, deadline=None)
@given(data=geometry_and_coords(2))
def test_to_pixels_always_inside(data: tuple[ImageGeometry, list[float]]) -> None:
    g, (x, y) = data
    assert inside(*to_pixels(x, y, g), g)


@settings(max_examples=300, deadline=None)
@given(data=geometry_and_coords(2, spill=0))
def test_round_trip_within_one_unit(data: tuple[ImageGeometry, list[float]]) -> None:
    g, (x, y) = data
    back = to_model(*to_pixels(x, y, g), g)
    assert back == pytest.approx((x, y), abs=1 / g.scale)


@settings(max_examples=300, deadline=None)
@given(data=geometry_and_coords(4, spill=0))
def test_rounded_bbox_round_trips_within_one_unit(data: tuple[ImageGeometry, list[float]]) -> None:
    g, (x1, y1, x2, y2) = data
    # A 0.01 px rounding is under one model unit once the image is at least ~10 px per axis.
    assume(g.width >= 16 and g.height >= 16)
    try:
        x, y, w, h = coco_bbox([x1, y1, x2, y2], g)
    except ValueError:
        return
    assert to_model(x, y, g) == pytest.approx((min(x1, x2), min(y1, y2)), abs=1)
    assert to_model(x + w, y + h, g) == pytest.approx((max(x1, x2), max(y1, y2)), abs=1)


# --- boxes ---------------------------------------------------------------------------------


def test_bbox_example() -> None:
    g = ImageGeometry(width=1024, height=768)
    assert coco_bbox([100, 200, 300, 400], g) == (102.4, 153.6, 204.8, 153.6)


@settings(max_examples=300, deadline=None)
@given(data=geometry_and_coords(4))
def test_bbox_inside_and_corner_order_irrelevant(data: tuple[ImageGeometry, list[float]]) -> None:
    g, (x1, y1, x2, y2) = data
    orders = [[x1, y1, x2, y2], [x2, y2, x1, y1], [x1, y2, x2, y1], [x2, y1, x1, y2]]
    try:
        boxes = {coco_bbox(order, g) for order in orders}
    except ValueError as exc:
        assert "zero-area" in str(exc)
        for order in orders:  # degenerate whatever the order
            with pytest.raises(ValueError):
                coco_bbox(order, g)
        return
    assert len(boxes) == 1
    box = boxes.pop()
    assert box_inside(box, g) and box[2] > 0 and box[3] > 0
    assert all(round(v, 2) == v for v in box)


@pytest.mark.parametrize("box", [[10, 10, 10, 50], [10, 10, 50, 10], [1005, 0, 1010, 50], [-9, 5, -1, 60]])
def test_degenerate_boxes_raise(box: list[float]) -> None:
    with pytest.raises(ValueError, match="zero-area"):
        coco_bbox(box, ImageGeometry(width=640, height=480))


# --- polygons ------------------------------------------------------------------------------


def test_polygon_example() -> None:
    g = ImageGeometry(width=200, height=100)
    square = coco_polygon([[0, 0], [500, 0], [500, 500], [500, 500], [0, 500], [0, 0]], g)
    assert square.flat == [0.0, 0.0, 100.0, 0.0, 100.0, 50.0, 0.0, 50.0]
    assert square.area == 5000.0
    assert square.bbox == (0.0, 0.0, 100.0, 50.0)


@pytest.mark.parametrize(
    ("points", "why"),
    [
        ([[10, 10], [10, 10], [10, 10]], "distinct"),
        ([[10, 10], [20, 20]], "distinct"),
        ([[10, 10], [20, 20], [30, 30]], "zero area"),  # collinear
        ([[1100, 10], [1200, 20], [1300, 30]], "zero area"),  # clamped onto the right edge
    ],
)
def test_degenerate_polygons_raise(points: list[list[float]], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        coco_polygon(points, ImageGeometry(width=640, height=480, scale=1000))


@settings(max_examples=300, deadline=None)
@given(data=geometry_and_coords(2 * 12))
def test_polygon_properties(data: tuple[ImageGeometry, list[float]]) -> None:
    g, coords = data
    points = [coords[i : i + 2] for i in range(0, len(coords), 2)]
    try:
        polygon = coco_polygon(points, g)
    except ValueError as exc:
        assert "distinct" in str(exc) or "zero area" in str(exc)
        return
    pairs = list(zip(polygon.flat[::2], polygon.flat[1::2], strict=True))
    assert len(pairs) >= 3 and len(set(pairs)) >= 3
    assert all(inside(x, y, g) for x, y in pairs)
    assert all(a != b for a, b in zip(pairs, pairs[1:] + pairs[:1], strict=True))  # no repeats
    assert polygon.area > 0
    assert box_inside(polygon.bbox, g)
    x, y, w, h = polygon.bbox
    assert all(x - EPS <= px <= x + w + EPS and y - EPS <= py <= y + h + EPS for px, py in pairs)


# --- keypoints -----------------------------------------------------------------------------


def test_keypoints_visibility() -> None:
    g = ImageGeometry(width=100, height=200)
    flat, labelled = coco_keypoints([[500, 500, 2], [100, 100, 1], [300, 300, 0], [400, 400, 7], [5, 5]], g)
    assert flat == [50.0, 100.0, 2.0, 10.0, 20.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 2.0]
    assert labelled == 3


@settings(max_examples=200, deadline=None)
@given(
    data=geometry_and_coords(2 * 6),
    flags=st.lists(st.sampled_from([0, 1, 2, 3, -1, 1.5]), min_size=6, max_size=6),
)
def test_keypoint_properties(data: tuple[ImageGeometry, list[float]], flags: list[float]) -> None:
    g, coords = data
    points = [[coords[2 * i], coords[2 * i + 1], flags[i]] for i in range(6)]
    flat, labelled = coco_keypoints(points, g)
    triples = [flat[i : i + 3] for i in range(0, len(flat), 3)]
    assert len(triples) == 6
    assert all(v in (0, 1, 2) for _, _, v in triples)
    assert all(x == y == 0 for x, y, v in triples if v == 0)
    assert all(inside(x, y, g) for x, y, _ in triples)
    assert labelled == sum(1 for _, _, v in triples if v > 0)


# --- annotations ---------------------------------------------------------------------------

G = ImageGeometry(width=1024, height=768)


def test_detections(profile: Profile) -> None:
    items: list[dict[str, Any]] = [
        {"label": "Brain", "bbox_2d": [100, 200, 300, 400]},
        {"label": "CSP", "bbox_2d": [50, 50, 50, 90]},  # zero width
        {"label": "spleen", "bbox_2d": [1, 1, 9, 9]},  # not a class
        {"label": "LV", "bbox_2d": [400, 300, 200, 100]},  # corners swapped
    ]
    detections, dropped = build_detections(items, G, profile)
    assert [d.id for d in detections] == [1, 2]
    assert detections[0] == Detection(
        id=1, label="Brain", category_id=profile.category_id("Brain"), bbox=(102.4, 153.6, 204.8, 153.6)
    )
    assert detections[0].score is None
    assert detections[1].label == "LV" and detections[1].bbox == (204.8, 76.8, 204.8, 153.6)
    assert dropped == [
        "item 2 (CSP): zero-area box after clamping to the image",
        "item 3 (spleen): 'spleen' is not a class of profile fada-skd",
    ]


def test_category_id_is_one_based_class_index(profile: Profile) -> None:
    detections, _ = build_detections([{"label": profile.classes[0], "bbox_2d": [1, 1, 9, 9]}], G, profile)
    assert detections[0].category_id == 1


def test_segmentations_box_choice(profile: Profile) -> None:
    mask = [[100, 100], [500, 100], [500, 500], [100, 500]]
    items: list[dict[str, Any]] = [
        {"label": "Brain", "bbox_2d": [90, 90, 510, 510], "mask": mask},  # model's box kept
        {"label": "Brain", "mask": mask},  # no box: polygon's
        {"label": "Brain", "bbox_2d": [90, 90, 90, 510], "mask": mask},  # degenerate box: polygon's
        {"label": "Brain", "bbox_2d": [90, 90, 510, 510], "mask": [[100, 100], [200, 100], [300, 100]]},
    ]
    segmentations, dropped = build_segmentations(items, G, profile)
    polygon_box = (102.4, 76.8, 409.6, 307.2)
    assert [s.bbox for s in segmentations] == [(92.16, 69.12, 430.08, 322.56), polygon_box, polygon_box]
    assert all(s.area == pytest.approx(409.6 * 307.2) for s in segmentations)
    assert segmentations[0].segmentation == [[102.4, 76.8, 512.0, 76.8, 512.0, 384.0, 102.4, 384.0]]
    assert dropped == ["item 4 (Brain): polygon has zero area"]


def test_keypoint_annotations(profile: Profile) -> None:
    items: list[dict[str, Any]] = [
        {"label": "NTKpoints", "bbox_2d": [100, 100, 200, 200], "keypoints": [[120, 150, 2], [180, 150, 2]]},
        # Degenerate box: the labelled points give one.
        {"label": "CRL_KP", "bbox_2d": [5, 5, 5, 5], "keypoints": [[100, 100, 2], [300, 400, 1], [0, 0, 0]]},
        # Degenerate box and points on one horizontal line: nothing to make a box from.
        {"label": "NTKpoints", "bbox_2d": [5, 5, 5, 5], "keypoints": [[120, 150, 2], [180, 150, 2]]},
        {"label": "NTKpoints", "bbox_2d": [1, 1, 9, 9]},
    ]
    keypoints, dropped = build_keypoints(items, G, profile)
    assert [k.id for k in keypoints] == [1, 2]
    assert keypoints[0].keypoints == [122.88, 115.2, 2.0, 184.32, 115.2, 2.0]
    assert keypoints[0].num_keypoints == 2
    assert keypoints[1].bbox == (102.4, 76.8, 204.8, 230.4)
    assert keypoints[1].num_keypoints == 2
    assert dropped[0].startswith("item 3 (NTKpoints): zero-area box")
    assert dropped[1] == "item 4 (NTKpoints): missing 'keypoints'"


def test_build_annotations_dispatch(profile: Profile) -> None:
    item = {"label": "Brain", "bbox_2d": [1, 1, 9, 9], "mask": [[1, 1], [9, 1], [9, 9]]}
    assert isinstance(build_annotations("detect", [item], G, profile)[0][0], Detection)
    assert isinstance(build_annotations("segment", [item], G, profile)[0][0], Segmentation)
    kp = {**item, "label": "CRL_KP", "keypoints": [[5, 5, 2]]}
    assert isinstance(build_annotations("keypoints", [kp], G, profile)[0][0], Keypoints)
    with pytest.raises(ValueError):
        build_annotations("classify", [item], G, profile)


def test_malformed_items_are_dropped_not_raised(profile: Profile) -> None:
    items: list[Any] = [{"bbox_2d": [1, 1, 9, 9]}, {"label": "Brain", "bbox_2d": "1,1,9,9"}, "junk"]
    annotations, dropped = build_annotations("detect", items, G, profile)
    assert annotations == [] and len(dropped) == 3


coords = st.floats(-50, 1050, allow_nan=False)
boxes = st.lists(coords, min_size=4, max_size=4)
polygons = st.lists(st.lists(coords, min_size=2, max_size=2), min_size=1, max_size=10)
points = st.lists(st.tuples(coords, coords, st.sampled_from([0, 1, 2, 5])).map(list), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(
    g=geometries.filter(lambda g: g.scale == 1000),
    items=st.lists(
        st.fixed_dictionaries(
            {"label": st.sampled_from(["Brain", "CRL_KP", "spleen"]), "bbox_2d": boxes},
            optional={"mask": polygons, "keypoints": points},
        ),
        max_size=6,
    ),
    phase=st.sampled_from(["detect", "segment", "keypoints"]),
)
def test_every_returned_shape_is_inside_the_image(
    profile: Profile, g: ImageGeometry, items: list[dict[str, Any]], phase: str
) -> None:
    annotations, dropped = build_annotations(phase, items, g, profile)
    assert len(annotations) + len(dropped) == len(items)
    assert [a.id for a in annotations] == list(range(1, len(annotations) + 1))
    for a in annotations:
        assert box_inside(a.bbox, g) and a.bbox[2] > 0 and a.bbox[3] > 0
        assert a.category_id == profile.category_id(a.label)
        if isinstance(a, Segmentation):
            flat = a.segmentation[0]
            assert a.area > 0
            assert all(inside(x, y, g) for x, y in zip(flat[::2], flat[1::2], strict=True))
        if isinstance(a, Keypoints):
            assert all(inside(x, y, g) for x, y in zip(a.keypoints[::3], a.keypoints[1::3], strict=True))
