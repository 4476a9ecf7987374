"""STOW-RS answers in DICOM XML (the Native DICOM Model, PS3.19 Annex A) for
``Accept: application/dicom+xml``, from the same dataset as its DICOM JSON answer; the Accept
header is negotiated with q-values and wildcards, and one that admits neither type is a 406
before anything is stored."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from api.dicom_xml import dicom_json_to_xml
from api.negotiation import Offer, negotiate

from .conftest import ClientFactory, Keys
from .helpers import assert_problem
from .test_dicomweb import _bytes, _jobs, _no_pixels, _related, _ultrasound

NS = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
XML, JSON = "application/dicom+xml", "application/dicom+json"
INTEGER_VRS = {"US", "SS", "UL", "SL", "UV", "SV", "IS"}
DECIMAL_VRS = {"FL", "FD", "DS"}
COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")


def xml_to_dicom_json(node: ET.Element) -> dict[str, Any]:
    """Read a Native DICOM Model data set back into the DICOM JSON model (an independent reader,
    written from PS3.19 A.1, checking the numbering as it goes)."""
    dataset: dict[str, Any] = {}
    for attribute in node:
        assert attribute.tag == f"{NS}DicomAttribute", attribute.tag
        tag, vr = attribute.attrib["tag"], attribute.attrib["vr"]
        assert len(tag) == 8 and tag == tag.upper() and tag not in dataset
        assert attribute.attrib.get("keyword", "") == pydicom.datadict.keyword_for_tag(int(tag, 16))
        element: dict[str, Any] = {"vr": vr}
        children = list(attribute)
        assert [int(c.attrib["number"]) for c in children if "number" in c.attrib] == \
            list(range(1, sum("number" in c.attrib for c in children) + 1))
        if vr == "SQ" and children:
            assert all(c.tag == f"{NS}Item" for c in children)
            element["Value"] = [xml_to_dicom_json(item) for item in children]
        elif vr == "PN" and children:
            element["Value"] = [{group.tag.removeprefix(NS): "^".join(
                (group.findtext(f"{NS}{c}") or "") for c in COMPONENTS).rstrip("^") for group in person}
                for person in children]
        elif children and children[0].tag == f"{NS}InlineBinary":
            element["InlineBinary"] = children[0].text
        elif children and children[0].tag == f"{NS}BulkData":
            element["BulkDataURI"] = children[0].attrib["uri"]
        elif children:
            assert all(c.tag == f"{NS}Value" for c in children)
            convert = int if vr in INTEGER_VRS else float if vr in DECIMAL_VRS else str
            element["Value"] = [None if c.text is None else convert(c.text) for c in children]
        dataset[tag] = element
    return dataset


def parse_native(data: bytes) -> dict[str, Any]:
    assert data.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    root = ET.fromstring(data)
    assert root.tag == f"{NS}NativeDicomModel"
    assert root.attrib == {"{http://www.w3.org/XML/1998/namespace}space": "preserve"}
    return xml_to_dicom_json(root)


# --- the writer ---------------------------------------------------------------------------------


def test_writer_round_trips_every_kind_of_value() -> None:
    dataset = {
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.6.1"]},
        "00080060": {"vr": "CS"},  # present, no value
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane^^Dr"}, {"Alphabetic": "Roe"}]},
        "00181063": {"vr": "DS", "Value": [33.3]},
        "00280010": {"vr": "US", "Value": [350]},
        "00280030": {"vr": "DS", "Value": [0.5, None, 0.25]},  # an empty value inside
        "00081199": {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", "Value": ["1.2"]}, "00081190": {"vr": "UR", "Value": ["http://h/a?x=1&y=<2>"]}},
            {},  # an empty item
            {"0040A730": {"vr": "SQ", "Value": [{"0040A160": {"vr": "UT", "Value": ["nested \u00e9 text"]}}]}}]},
        "00420011": {"vr": "OB", "InlineBinary": base64.b64encode(b"\x00\x01pdf").decode()},
        "7FE00010": {"vr": "OW", "BulkDataURI": "http://h/bulk/1"},
    }
    assert parse_native(dicom_json_to_xml(dataset)) == dataset


def test_writer_puts_attributes_in_tag_order_with_keywords() -> None:
    root = ET.fromstring(dicom_json_to_xml({"00081199": {"vr": "SQ", "Value": [{}]},
                                            "00081198": {"vr": "SQ", "Value": [{}]}}))
    assert [(a.attrib["tag"], a.attrib["keyword"]) for a in root] == [
        ("00081198", "FailedSOPSequence"), ("00081199", "ReferencedSOPSequence")]


def test_writer_keeps_the_document_well_formed_whatever_the_text() -> None:
    dataset = {"0040A160": {"vr": "UT", "Value": ["bad\x00byte \x1b and ]]> </DicomAttribute>"]}}
    back = parse_native(dicom_json_to_xml(dataset))
    assert back["0040A160"]["Value"] == ["bad\ufffdbyte \ufffd and ]]> </DicomAttribute>"]


def test_writer_refuses_private_elements_it_cannot_describe() -> None:
    with pytest.raises(ValueError, match="private"):
        dicom_json_to_xml({"00091010": {"vr": "LO", "Value": ["x"]}})


# --- negotiation --------------------------------------------------------------------------------

STOW = (Offer(JSON, aliases=("application/json",)), Offer(XML))


@pytest.mark.parametrize(("accept", "chosen"), [
    (None, JSON),
    ("", JSON),
    ("*/*", JSON),
    ("application/*", JSON),
    ("application/json", JSON),
    (JSON, JSON),
    (XML, XML),
    ("Application/DICOM+XML", XML),
    (f"{XML}; charset=utf-8", XML),
    (f"{XML}, {JSON}", JSON),  # equal weights: the server's preference
    (f"{JSON};q=0.5, {XML}", XML),
    (f"{XML};q=0.9, {JSON};q=0.8", XML),
    (f"{XML};q=0.9, */*", JSON),  # */* gives JSON 1, more than XML's 0.9
    (f"{JSON};q=0, application/*", XML),  # JSON refused by name, XML admitted by the wildcard
    (f"{JSON};q=0, */*;q=0.1", XML),
    ("text/html, application/xhtml+xml, application/xml;q=0.9, */*;q=0.8", JSON),  # a browser
    ("application/dicom+xml;q=2, application/dicom+json;q=0.1", JSON),  # q=2 is not a qvalue: that range is ignored
    ("not a media type", JSON),  # nothing parses: as if there were no Accept header
    ("text/html", None),
    ("application/dicom", None),
    ("text/*, image/png", None),
    (f"{JSON};q=0", None),
    ("*/*;q=0", None),
    (f"{JSON};q=0, {XML};q=0.000", None),
])
def test_accept_header_negotiation(accept: str | None, chosen: str | None) -> None:
    assert negotiate(accept, STOW) == chosen


# --- STOW-RS through the app ---------------------------------------------------------------------


def test_stow_answers_dicom_xml_with_the_json_answer_s_dataset(make_client: ClientFactory, keys: Keys,
                                                             sm: sessionmaker[Session]) -> None:
    client = make_client()
    good, bad = _ultrasound(generate_uid()), _no_pixels()
    body, ctype = _related(_bytes(good), _bytes(bad), b"not dicom at all")
    headers = {**keys.submitter.headers, "Content-Type": ctype}
    as_json = client.post("/dicomweb/studies", content=body, headers={**headers, "Accept": JSON})
    # the same push again (the good instance answers with its job): now as XML
    as_xml = client.post("/dicomweb/studies", content=body, headers={**headers, "Accept": XML})

    assert as_json.status_code == as_xml.status_code == 202
    assert as_xml.headers["content-type"] == XML and as_json.headers["content-type"] == JSON
    assert as_xml.headers["vary"] == as_json.headers["vary"] == "Accept"
    answer = parse_native(as_xml.content)
    assert answer == as_json.json()
    ds = pydicom.Dataset.from_json(answer)  # and it reads as the STOW-RS response it is
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedSOPSequence] == [good.SOPInstanceUID]
    assert ds.ReferencedSOPSequence[0].RetrieveURL.endswith(f"/v1/jobs/{_jobs(sm)[0].id}")
    assert [i.FailureReason for i in ds.FailedSOPSequence] == [0xC000, 0xC000]
    assert len(_jobs(sm)) == 1

    root = ET.fromstring(as_xml.content)  # the shape PS3.18 shows for an XML STOW-RS response
    item = root.find(f"{NS}DicomAttribute[@tag='00081199'][@vr='SQ'][@keyword='ReferencedSOPSequence']"
                     f"/{NS}Item[@number='1']")
    assert item is not None
    uid = item.find(f"{NS}DicomAttribute[@keyword='ReferencedSOPInstanceUID']/{NS}Value[@number='1']")
    assert uid is not None and uid.text == good.SOPInstanceUID


@pytest.mark.parametrize(("accept", "answered"), [
    ("*/*", JSON), ("application/*", JSON), ("application/json", JSON),
    (f"{JSON};q=0.4, {XML};q=0.5", XML), (f"text/html, {XML};q=0.1", XML),
])
def test_stow_negotiates_the_answer(make_client: ClientFactory, keys: Keys, accept: str, answered: str) -> None:
    client = make_client()
    body, ctype = _related(_bytes(_ultrasound(generate_uid())))
    r = client.post("/dicomweb/studies", content=body,
                    headers={**keys.submitter.headers, "Content-Type": ctype, "Accept": accept})
    assert r.status_code == 200 and r.headers["content-type"] == answered
    answer = r.json() if answered == JSON else parse_native(r.content)
    assert len(answer["00081199"]["Value"]) == 1


@pytest.mark.parametrize("accept", ["text/html", "application/dicom", f"{JSON};q=0", f"{JSON};q=0, {XML};q=0"])
def test_stow_refuses_an_accept_header_it_cannot_satisfy_before_storing(
        make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session], accept: str) -> None:
    client = make_client()
    body, ctype = _related(_bytes(_ultrasound(generate_uid())))
    r = client.post("/dicomweb/studies", content=body,
                    headers={**keys.submitter.headers, "Content-Type": ctype, "Accept": accept})
    problem = assert_problem(r, 406, "not_acceptable")
    assert problem["available"] == [JSON, XML]
    assert _jobs(sm) == []


def test_stow_busy_answer_in_xml_keeps_retry_after(make_client: ClientFactory, keys: Keys) -> None:
    client = make_client(max_pending_per_key=1)
    headers = {**keys.submitter.headers, "Accept": XML}
    body, ctype = _related(_bytes(_ultrasound(generate_uid())))
    assert client.post("/dicomweb/studies", content=body, headers={**headers, "Content-Type": ctype}).status_code == 200
    body, ctype = _related(_bytes(_ultrasound(generate_uid())))
    busy = client.post("/dicomweb/studies", content=body, headers={**headers, "Content-Type": ctype})
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "10"
    assert busy.headers["content-type"] == XML
    assert parse_native(busy.content)["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]


def test_openapi_documents_both_answers_and_the_406(client: TestClient) -> None:
    responses = client.get("/openapi.json").json()["paths"]["/dicomweb/studies"]["post"]["responses"]
    for status in ("200", "202", "409", "503"):
        assert set(responses[status]["content"]) == {JSON, XML}
    assert "application/problem+json" in responses["406"]["content"]
