"""Rendering EC2 responses: nested Python values to the XML botocore's ec2 parser reads.

A response body is a dict of element name -> value, where a value is a str/int/bool
(text), a dict (child elements, in order), a list (``<item>`` children) or None
(element left out). ``Members`` wraps a list whose children are ``<member>`` instead.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape, quoteattr

DEFAULT_VERSION = "2016-11-15"
_VERSION = re.compile(r"[0-9A-Za-z._-]{1,32}")


class Members(list):
    """A list rendered with <member> children (Eucalyptus' own services use that style)."""


def namespace(version: str | None) -> str:
    """The EC2 namespace echoing the request's Version (any well-formed one)."""
    if not version or not _VERSION.fullmatch(version):
        version = DEFAULT_VERSION
    return f"http://ec2.amazonaws.com/doc/{version}/"


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return escape(str(value))


def _render(out: list[str], name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, dict):
        out.append(f"<{name}>")
        for k, v in value.items():
            _render(out, k, v)
        out.append(f"</{name}>")
    elif isinstance(value, list):
        child = "member" if isinstance(value, Members) else "item"
        out.append(f"<{name}>")
        for v in value:
            _render(out, child, v)
        out.append(f"</{name}>")
    else:
        out.append(f"<{name}>{_text(value)}</{name}>")


def response_document(action: str, version: str | None, request_id: str, body: dict) -> bytes:
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n',
           f"<{action}Response xmlns={quoteattr(namespace(version))}>",
           f"<requestId>{escape(request_id)}</requestId>"]
    for k, v in body.items():
        _render(out, k, v)
    out.append(f"</{action}Response>")
    return "".join(out).encode()


def error_document(code: str, message: str, request_id: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"</Error></Errors><RequestID>{escape(request_id)}</RequestID></Response>"
    ).encode()
