"""Fixture builders for the ingest tests: inputs are generated in memory, never committed."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def sample_path(name: str) -> Path:
    """A file bundled with pydicom. Missing files fail loudly: nothing is skipped or downloaded."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.fail(f"pydicom test file {name!r} is not installed")
    return Path(str(path))


def sample_bytes(name: str) -> bytes:
    return sample_path(name).read_bytes()


def sample_dataset(name: str) -> Dataset:
    return dcmread(sample_path(name))


def dataset_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def make_dicom(
    arr: np.ndarray,
    photometric: str,
    *,
    bits_stored: int | None = None,
    transfer_syntax: UID = ExplicitVRLittleEndian,
    **attributes: Any,
) -> bytes:
    """A minimal Secondary Capture object around ``arr`` (frames first for multi-frame grey)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return dataset_bytes(ds)


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def forge_png_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite IHDR's width/height (and its CRC) without touching the pixel data."""
    forged = bytearray(png)
    assert forged[12:16] == b"IHDR"
    struct.pack_into(">II", forged, 16, width, height)
    struct.pack_into(">I", forged, 29, zlib.crc32(bytes(forged[12:29])))
    return bytes(forged)


def forge_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Rewrite the SOF segment's height/width without touching the scan data."""
    forged = bytearray(jpeg)
    pos = 2
    while forged[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + struct.unpack_from(">H", forged, pos + 2)[0]
    struct.pack_into(">HH", forged, pos + 5, height, width)
    return bytes(forged)


def noise_rgb(width: int = 48, height: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
