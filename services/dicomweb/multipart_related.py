"""Splitting a ``multipart/related; type="application/dicom"`` body into its parts, with
python-multipart's streaming parser (the same parser Starlette uses for forms)."""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

DICOM_TYPE = "application/dicom"


class NotMultipartRelated(ValueError):
    """The request is not ``multipart/related`` with DICOM parts (HTTP 415)."""


class MalformedMultipart(ValueError):
    """The body does not parse as the multipart its content type announces (HTTP 400)."""


@dataclass
class Part:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)

    @property
    def content_type(self) -> str:
        value, _ = parse_options_header(self.headers.get("content-type", ""))
        return value.decode("latin-1").lower()


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/related`` request whose ``type`` is application/dicom (or
    absent: each part then says its own type)."""
    value, params = parse_options_header(content_type or "")
    if value.lower() != b"multipart/related":
        raise NotMultipartRelated(f"expected multipart/related; type=\"{DICOM_TYPE}\", got {content_type!r}")
    kind = params.get(b"type", b"").decode("latin-1").strip('"').lower()
    if kind and kind != DICOM_TYPE:
        raise NotMultipartRelated(f"only type=\"{DICOM_TYPE}\" parts are accepted, got type={kind!r}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise NotMultipartRelated("the multipart/related content type has no boundary")
    # RFC 2046 says at most 70, but peers send longer ones (Orthanc does); the parser needs ASCII
    if not boundary.isascii():
        raise NotMultipartRelated("the multipart boundary must be ASCII")
    return boundary


def split_parts(body: bytes, boundary: bytes) -> list[Part]:
    parts: list[Part] = []
    header_name = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        parts.append(Part())

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data += data[start:end]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        parts[-1].headers[header_name.decode("latin-1").lower()] = header_value.decode("latin-1")
        header_name.clear()
        header_value.clear()

    parser = MultipartParser(boundary, callbacks={
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end})
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise MalformedMultipart(f"the multipart/related body does not parse: {exc}") from None
    return parts
