"""Building S3 response documents and reading request documents.

Responses are built with xml.etree (serialised with the S3 namespace as default); request
bodies are untrusted and parsed with defusedxml only, with a size cap applied by the caller.
"""

from __future__ import annotations

from datetime import datetime, timezone
from xml.etree import ElementTree as ET

from defusedxml.ElementTree import fromstring as _parse_untrusted

from .errors import S3Error

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
ET.register_namespace("", S3_NS)
ET.register_namespace("xsi", "http://www.w3.org/2001/XMLSchema-instance")


def element(tag: str) -> ET.Element:
    return ET.Element(f"{{{S3_NS}}}{tag}")


def subelement(parent: ET.Element, tag: str, text: str | int | None = None) -> ET.Element:
    child = ET.SubElement(parent, f"{{{S3_NS}}}{tag}")
    if text is not None:
        child.text = str(text)
    return child


def to_bytes(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8",
                                                                    xml_declaration=False)


def text_of(parent: ET.Element, tag: str) -> str | None:
    """Text of the first direct child named tag, with or without a namespace."""
    for child in parent:
        if child.tag.rsplit("}", 1)[-1] == tag:
            return child.text or ""
    return None


def children(parent: ET.Element, tag: str) -> list[ET.Element]:
    return [c for c in parent if c.tag.rsplit("}", 1)[-1] == tag]


def parse_request_xml(body: bytes, root_tag: str) -> ET.Element:
    """Parse an untrusted request document; MalformedXML unless its root is root_tag."""
    if not body:
        raise S3Error("MalformedXML")
    try:
        root = _parse_untrusted(body)
    except Exception as exc:  # ParseError, DTDForbidden, EntitiesForbidden, ...
        raise S3Error("MalformedXML") from exc
    if root.tag.rsplit("}", 1)[-1] != root_tag:
        raise S3Error("MalformedXML")
    return root


def iso8601(timestamp: float) -> str:
    """S3's timestamp format in XML: 2006-02-03T16:45:09.000Z."""
    dt = datetime.fromtimestamp(timestamp, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def error_document(code: str, message: str, resource: str, request_id: str,
                   fields: dict[str, str]) -> bytes:
    # S3 error documents carry no namespace.
    root = ET.Element("Error")
    ET.SubElement(root, "Code").text = code
    ET.SubElement(root, "Message").text = message
    for name, value in fields.items():
        ET.SubElement(root, name).text = str(value)
    ET.SubElement(root, "Resource").text = resource
    ET.SubElement(root, "RequestId").text = request_id
    return to_bytes(root)
