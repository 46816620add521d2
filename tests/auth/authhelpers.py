"""Building requests with botocore's own signers and turning them into our HttpRequest."""

from __future__ import annotations

import email.utils
from datetime import datetime, timezone
from urllib.parse import urlsplit

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import percent_encode_sequence

from eucalypt.auth import HttpRequest

AK = "AKIDEXAMPLE"
SK = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
NOW = datetime(2024, 5, 17, 12, 30, 45, tzinfo=timezone.utc)


def freeze_botocore(monkeypatch, now: datetime = NOW) -> None:
    """Make botocore's signers read our fixed clock instead of the real one."""
    naive = now.astimezone(timezone.utc).replace(tzinfo=None)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: naive)
    stamp = now.timestamp()
    monkeypatch.setattr(botocore.auth, "formatdate", lambda *a, **k: email.utils.formatdate(stamp, usegmt=True))
    monkeypatch.setattr(
        botocore.auth.HmacV1QueryAuth, "_get_date", lambda self: str(int(stamp + int(self._expires)))
    )


def botocore_request(method: str, url: str, *, headers=None, params=None, data=b"", auth_path=None) -> AWSRequest:
    # botocore's endpoint code puts the query into the URL (percent_encode_sequence: RFC 3986,
    # space as %20) before signing; do the same so we test what real clients send.
    if params:
        url = f"{url}{'&' if '?' in url else '?'}{percent_encode_sequence(params)}"
    req = AWSRequest(method=method, url=url, headers=dict(headers or {}), data=data, auth_path=auth_path)
    req.headers["Host"] = botocore.auth._host_from_url(url)
    return req


def to_http(req: AWSRequest) -> HttpRequest:
    parts = urlsplit(req.url)
    return HttpRequest(method=req.method, path=parts.path or "/", query=parts.query, headers=dict(req.headers.items()))


def creds(ak: str = AK, sk: str = SK) -> Credentials:
    return Credentials(ak, sk)
