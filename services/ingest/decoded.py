"""The result of decoding one upload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PIL import Image

ImageFormat = Literal["png", "jpeg", "dicom"]


@dataclass(frozen=True)
class DicomInfo:
    """What is kept of a DICOM header: the UIDs that link a result back to the PACS object, the
    pixel description, modality and device model, and the burned-in annotation flag. Nothing
    about the patient, the staff, the institution or dates is ever read into it."""

    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    modality: str | None
    photometric_interpretation: str | None  # as stored in the file, before any conversion
    transfer_syntax_uid: str | None
    manufacturer_model_name: str | None = None
    sop_class_uid: str | None = None
    burned_in_annotation: str | None = None  # (0028,0301): "YES" means identifying text may be in the pixels


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # mode "RGB", 8 bits per channel, display orientation
    format: ImageFormat
    width: int  # of ``image``
    height: int
    sha256: str  # hex digest of the original bytes, not of the decoded pixels
    pixel_spacing_mm: tuple[float, float] | None  # (row, col), i.e. (vertical, horizontal)
    frame: int  # 0-based index of the decoded frame
    frame_count: int | None  # frames in the upload; None: not recorded (an image stored before it was)
    dicom: DicomInfo | None = None
