"""Turn one decoded DICOM frame (a numpy array) into an 8-bit RGB image for display."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, convert_color_space

from .errors import UndecodableImage, UnsupportedDicom
from .pixels import rgb_to_image, scale_to_uint8, stretch_to_uint8

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_YBR_FULL = ("YBR_FULL", "YBR_FULL_422")


def frame_to_rgb8(arr: NDArray[Any], ds: Dataset, decoded: Mapping[str, object]) -> Image.Image:
    """Convert a frame to 8-bit RGB.

    ``decoded`` is the pixel description pydicom returns with the array: it tells what the
    array now holds, which may differ from the dataset (pydicom and the JPEG/J2K plugins already
    turn YBR_FULL, YBR_FULL_422, YBR_RCT and YBR_ICT into RGB).
    """
    photometric = _text(decoded.get("photometric_interpretation"))
    bits_stored = _positive_int(decoded.get("bits_stored")) or _positive_int(ds.get("BitsStored")) or 8
    try:
        if photometric in _MONOCHROME:
            _require(arr.ndim == 2, photometric, arr)
            gray = _monochrome_to_uint8(arr, ds, bits_stored)
            if photometric == "MONOCHROME1":  # MONOCHROME1: low values are white
                gray = 255 - gray
            return Image.fromarray(np.ascontiguousarray(gray)).convert("RGB")
        if photometric == "PALETTE COLOR":
            _require(arr.ndim == 2, photometric, arr)
            return _palette_to_rgb8(arr, ds)
        if photometric in _YBR_FULL:
            # Only reached if a decoding plugin left YCbCr in place; pydicom's own path converts.
            _require(arr.ndim == 3 and arr.shape[-1] == 3, photometric, arr)
            arr = convert_color_space(arr, photometric, "RGB")
            photometric = "RGB"
        if photometric == "RGB":
            _require(arr.ndim == 3 and arr.shape[-1] == 3, photometric, arr)
            return rgb_to_image(arr, 2**bits_stored - 1)
    except (UnsupportedDicom, UndecodableImage):
        raise
    except Exception as exc:  # inconsistent LUTs, windows or rescale values in the dataset
        raise UndecodableImage(f"DICOM {photometric} pixel values could not be converted: {exc}") from exc
    raise UnsupportedDicom(f"photometric interpretation {photometric or '(missing)'} is not supported")


def _text(value: object) -> str:
    # pydicom returns PhotometricInterpretation enum members for converted data, plain str otherwise.
    return str(getattr(value, "value", value) or "").strip().upper()


def _positive_int(value: object) -> int | None:
    try:
        number = int(str(value))
    except ValueError:
        return None
    return number if number > 0 else None


def _require(ok: bool, photometric: str, arr: NDArray[Any]) -> None:
    if not ok:
        raise UnsupportedDicom(f"{photometric} with pixel array shape {arr.shape} is not supported")


def _palette_to_rgb8(arr: NDArray[Any], ds: Dataset) -> Image.Image:
    rgb = apply_color_lut(arr, ds)
    # LUT entries are 8 or 16 bits (descriptor value 3). Some writers declare 16 bits but store
    # 8-bit values; scaling those by 65535 would give a near-black image, so judge by content.
    max_value = 65535 if rgb.dtype.itemsize > 1 and int(rgb.max()) > 255 else 255
    return rgb_to_image(rgb, max_value)


def _monochrome_to_uint8(arr: NDArray[Any], ds: Dataset, bits_stored: int) -> NDArray[np.uint8]:
    """Modality rescale, then the VOI the file asks for; without one, a full-range or min-max map."""
    has_modality = _changes_values(ds)
    values = apply_modality_lut(arr, ds) if has_modality else arr

    voi_items = ds.get("VOILUTSequence")
    if voi_items and "LUTDescriptor" in voi_items[0] and "LUTData" in voi_items[0]:
        depth = int(voi_items[0].LUTDescriptor[2])
        return scale_to_uint8(apply_voi(values, ds), 2**depth - 1)

    window = _first_window(ds)
    if window is not None:
        center, width = window
        return _apply_window(values, center, width, _text(ds.get("VOILUTFunction")) or "LINEAR")

    if not has_modality and bits_stored <= 8 and int(ds.get("PixelRepresentation", 0) or 0) == 0:
        # 8-bit (ultrasound, secondary capture) data is already display-ready: keep it as is.
        return scale_to_uint8(values, 2**bits_stored - 1)
    # Deeper data with no window: use what the frame contains, as viewers do by default.
    return stretch_to_uint8(values)


def _changes_values(ds: Dataset) -> bool:
    """A Modality LUT, or a rescale other than slope 1 / intercept 0: that one is the identity
    (PS3.3 C.11.1), which many writers add to 8-bit data, and must not change the image."""
    if ds.get("ModalityLUTSequence"):
        return True
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return False
    try:
        return float(ds.RescaleSlope) != 1.0 or float(ds.RescaleIntercept) != 0.0
    except (TypeError, ValueError):
        return True  # odd values: apply_modality_lut judges them as before


def _first_window(ds: Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    # VM 1-n: several alternative windows; the first is the writer's default.
    center_value = float(center[0] if _is_multi(center) else center)
    width_value = float(width[0] if _is_multi(width) else width)
    if not (np.isfinite(center_value) and np.isfinite(width_value)) or width_value <= 0:
        return None  # an unusable window: fall back as if none was given
    return center_value, width_value


def _is_multi(value: object) -> bool:
    return isinstance(value, (MultiValue, list, tuple))


def _apply_window(values: NDArray[Any], center: float, width: float, function: str) -> NDArray[np.uint8]:
    """PS3.3 C.11.2.1.2 / C.11.2.1.3, mapped straight onto 0..255."""
    x = np.asarray(values, dtype=np.float32)
    if function == "SIGMOID":
        unit = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        unit = (x - center) / width + 0.5
    else:  # LINEAR, the default (and the fallback for unknown functions)
        if width <= 1:  # degenerate LINEAR window: a threshold (the standard requires width >= 1)
            return np.where(x <= center - 0.5, 0, 255).astype(np.uint8)
        unit = (x - (center - 0.5)) / (width - 1) + 0.5
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
