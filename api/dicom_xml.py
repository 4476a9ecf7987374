"""DICOM XML (the Native DICOM Model, PS3.19 Annex A) written from the DICOM JSON model
(PS3.18 Annex F), so that an answer offered as ``application/dicom+json`` can also be given as
``application/dicom+xml`` from the very same dataset. pydicom writes JSON but no XML.

Covered: every VR with ``Value`` (strings and numbers one ``<Value number>`` each, SQ one
``<Item number>`` each, PN its name components), ``InlineBinary`` and ``BulkDataURI``; an
attribute with no value is an empty ``<DicomAttribute>``. Not covered: private data elements
(the JSON model does not carry their Private Creator, which the XML needs): refused.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from pydicom.datadict import keyword_for_tag

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
MEDIA_TYPE = "application/dicom+xml"
XML_SPACE = "{http://www.w3.org/XML/1998/namespace}space"
NAME_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
NAME_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
# Characters XML 1.0 cannot carry at all, not even escaped (C0 controls but tab, CR, LF...).
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def dicom_json_to_xml(dataset: Mapping[str, Any]) -> bytes:
    """The dataset (DICOM JSON) as a ``NativeDicomModel`` document, UTF-8 with its declaration."""
    # ElementTree's default_namespace option refuses unqualified attribute names (tag, vr...),
    # so the default namespace is declared as a plain attribute of the root.
    root = ET.Element("NativeDicomModel", {"xmlns": NAMESPACE, XML_SPACE: "preserve"})
    _add_attributes(root, dataset)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _add_attributes(parent: ET.Element, dataset: Mapping[str, Any]) -> None:
    for tag in sorted(dataset, key=lambda t: int(t, 16)):  # a data set is in ascending tag order
        number = int(tag, 16)
        if (number >> 16) % 2:
            raise ValueError(f"private data element {tag}: the DICOM JSON model has no Private Creator for it")
        element = dataset[tag]
        vr = str(element["vr"])
        fields = {"tag": f"{number:08X}", "vr": vr}
        if keyword := keyword_for_tag(number):
            fields["keyword"] = keyword
        node = ET.SubElement(parent, "DicomAttribute", fields)
        if "Value" in element:
            for n, value in enumerate(element["Value"], start=1):
                if vr == "SQ":
                    _add_attributes(ET.SubElement(node, "Item", {"number": str(n)}), value or {})
                elif vr == "PN":
                    _add_person_name(node, n, value or {})
                else:
                    ET.SubElement(node, "Value", {"number": str(n)}).text = _text(value)
        elif "InlineBinary" in element:
            ET.SubElement(node, "InlineBinary").text = _text(element["InlineBinary"])
        elif "BulkDataURI" in element:
            ET.SubElement(node, "BulkData", {"uri": _text(element["BulkDataURI"]) or ""})


def _add_person_name(node: ET.Element, number: int, name: Mapping[str, str]) -> None:
    person = ET.SubElement(node, "PersonName", {"number": str(number)})
    for group in NAME_GROUPS:
        if not name.get(group):
            continue
        holder = ET.SubElement(person, group)
        for component, text in zip(NAME_COMPONENTS, name[group].split("^"), strict=False):
            if text:
                ET.SubElement(holder, component).text = _text(text)


def _text(value: Any) -> str | None:
    """A value as its characters (a number as JSON writes it; null, an empty value, as none),
    with any character XML cannot hold replaced by U+FFFD."""
    if value is None:
        return None
    if isinstance(value, bool):  # not a DICOM type; never str()'s "True"
        raise ValueError(f"a boolean is not a DICOM value: {value!r}")
    return NOT_XML.sub("\ufffd", str(value))
