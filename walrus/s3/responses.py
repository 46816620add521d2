"""Response constructors shared by the handlers."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from aiohttp import web

from .xml import to_bytes


def xml_response(root: ET.Element, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=to_bytes(root), status=status, headers=headers,
                        content_type="application/xml")


def empty(status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, headers=headers)
