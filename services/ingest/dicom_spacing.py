"""Physical pixel size of a DICOM image, in millimetres, as (row, col)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from pydicom.dataset import Dataset

_UNITS_CM = 3  # PS3.3 C.8.5.5.1.15 Physical Units X/Y Direction: 3 = cm
_SPATIAL_2D = 1  # PS3.3 C.8.5.5.1.1 Region Spatial Format: 1 = 2D (tissue or colour flow)


def pixel_spacing_mm(ds: Dataset, frame: int = 0) -> tuple[float, float] | None:
    """Spacing from ultrasound regions, else Pixel Spacing (plain or functional groups), else None."""
    return _from_ultrasound_regions(ds) or _from_pixel_spacing(ds, frame)


def _from_ultrasound_regions(ds: Dataset) -> tuple[float, float] | None:
    # Ultrasound objects describe calibration per region of the screen; the rest of the image
    # (annotations, Doppler strips, M-mode) has other units or none.
    regions = list(ds.get("SequenceOfUltrasoundRegions") or [])
    calibrated = [r for r in regions if _in_cm(r)]
    preferred = [r for r in calibrated if _int(r.get("RegionSpatialFormat")) == _SPATIAL_2D]
    for region in preferred or calibrated:
        # The sign of a delta encodes direction, not size.
        spacing = _positive_pair(_float(region.get("PhysicalDeltaY")), _float(region.get("PhysicalDeltaX")), scale=10.0)
        if spacing is not None:
            return spacing
    return None


def _from_pixel_spacing(ds: Dataset, frame: int) -> tuple[float, float] | None:
    candidates: list[Dataset] = [ds]
    # Enhanced (multi-frame) objects keep Pixel Spacing in functional groups instead.
    for group_seq, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(group_seq)
        if groups and index < len(groups):
            candidates.extend(groups[index].get("PixelMeasuresSequence") or [])
    for item in candidates:
        value = item.get("PixelSpacing")
        if value is not None and len(_as_list(value)) == 2:
            row, col = _as_list(value)
            spacing = _positive_pair(_float(row), _float(col), scale=1.0)
            if spacing is not None:
                return spacing
    return None


def _in_cm(region: Dataset) -> bool:
    return (
        _int(region.get("PhysicalUnitsXDirection")) == _UNITS_CM
        and _int(region.get("PhysicalUnitsYDirection")) == _UNITS_CM
    )


def _positive_pair(row: float | None, col: float | None, *, scale: float) -> tuple[float, float] | None:
    if row is None or col is None:
        return None
    row, col = abs(row) * scale, abs(col) * scale
    if row > 0 and col > 0 and math.isfinite(row) and math.isfinite(col):
        return row, col
    return None


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, Iterable) and not isinstance(value, (str, bytes)) else [value]


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
