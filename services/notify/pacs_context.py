"""The patient and study attributes of a job's source instance, read from the PACS when the
job's SR is pushed there. The service keeps no patient identity (de-identification at ingest),
but an SR filed in the source's study must carry that study's Patient and General Study
values: a study belongs to one patient (PS3.3 A.1.2), and a PACS that receives an SR with the
study's UID and an empty patient files it as a second, patient-less copy of the study. The
values pass through this process to the PACS that already holds them; nothing is stored."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from services.export.dicom_sr import SourceInstance

# Patient module and General Study module attributes the SR repeats; SpecificCharacterSet so
# that names outside ASCII read back the same. By tag, as DICOM JSON keys them.
CONTEXT_KEYWORDS = ("SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                    "PatientSex", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID",
                    "StudyDescription")
CONTEXT_TAGS = frozenset(f"{tag_for_keyword(keyword):08X}" for keyword in CONTEXT_KEYWORDS)


class SourceNotInPacs(Exception):
    """The PACS does not answer the source instance's metadata: no SR is pushed (yet)."""


def metadata_url(stow_url: str, source: SourceInstance) -> str:
    """WADO-RS instance metadata URL on the same DICOMweb service as the STOW-RS URL
    (``…/dicom-web/studies`` -> ``…/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata``)."""
    parts = urlsplit(stow_url)
    base = parts.path.rstrip("/")
    base = base[: base.rfind("/studies")] if "/studies" in base else base
    path = (f"{base}/studies/{source.study_instance_uid}/series/{source.series_instance_uid}"
            f"/instances/{source.sop_instance_uid}/metadata")
    return parts._replace(path=path).geturl()  # the query (an API key some PACS take there) stays


def source_context(client: httpx.Client, stow_url: str, source: SourceInstance,
                   authorization: str | None) -> Dataset:
    """The source's patient and study attributes as the PACS holds them. Raises
    ``SourceNotInPacs`` when the PACS does not have it or will not say, with why."""
    headers = {"Accept": "application/dicom+json"}
    if authorization:
        headers["Authorization"] = authorization
    url = metadata_url(stow_url, source)
    response = client.get(url, headers=headers)
    if response.status_code == 404 or (response.is_success and not _items(response)):
        raise SourceNotInPacs(
            f"the PACS has no instance {source.sop_instance_uid} (WADO-RS metadata: HTTP {response.status_code}); "
            f"an SR with study {source.study_instance_uid} and no patient would start a second, patient-less "
            "copy of that study there, so it waits until the PACS holds the source")
    if not response.is_success:
        raise SourceNotInPacs(f"the PACS answered HTTP {response.status_code} to the source's metadata ({url})")
    [first, *_] = _items(response)
    context = Dataset()
    for tag, value in first.items():
        if tag in CONTEXT_TAGS:
            element = _element(tag, value)
            if element is not None:
                context.add(element)
    return context


def _element(tag: str, value: Any) -> DataElement | None:
    """One attribute from the PACS's DICOM JSON, or None when it is malformed or a value an SR
    may not carry (highdicom refuses e.g. PatientSex "U" or a date written 1990-01-01): a
    missing optional attribute is better than an SR that can never be built."""
    try:
        element = Dataset.from_json({tag: value})[int(tag, 16)]
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    text = str(element.value) if element.value is not None else ""
    if element.keyword == "PatientSex" and text not in ("M", "F", "O", ""):
        return None
    if element.VR == "DA" and text and not re.fullmatch(r"\d{8}", text):
        return None
    if element.VR == "TM" and text and not re.fullmatch(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", text):
        return None
    return element


def _items(response: httpx.Response) -> list[dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        return []
    return [item for item in body if isinstance(item, dict)] if isinstance(body, list) else []
