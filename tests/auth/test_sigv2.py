"""SigV2: S3 (header and presigned) and the EC2 Query variant, signed by botocore, verified by us."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import botocore.auth
import pytest
from authhelpers import AK, NOW, SK, botocore_request, creds, freeze_botocore, to_http

from eucalypt.auth import (
    AccessDenied,
    HttpRequest,
    PayloadMode,
    RequestTimeTooSkewed,
    Scheme,
    SignatureDoesNotMatch,
    parse,
    sign_v2_ec2,
    verify,
)

KEYS = ["plain", "sp ace/unicodé 鍵", "plus+tilde~eq=pct%25"]


@pytest.fixture(autouse=True)
def _frozen(monkeypatch):
    freeze_botocore(monkeypatch)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("style", ["path", "vhost", "objectstorage", "Walrus"])
@pytest.mark.parametrize("query", [{}, {"acl": ""}, {"uploadId": "u 1", "partNumber": "3"}, {"prefix": "p", "versions": ""}])
def test_s3_header(key, style, query):
    enc = quote(key, safe="/~")
    resource = f"/bucket/{enc}"
    url = {
        "path": f"http://walrus.example/bucket/{enc}",
        "vhost": f"http://bucket.walrus.example/{enc}",
        "objectstorage": f"http://walrus.example/services/objectstorage/bucket/{enc}",
        "Walrus": f"http://walrus.example/services/Walrus/bucket/{enc}",
    }[style]
    req = botocore_request("PUT", url, params=query, headers={"Content-Type": "text/plain", "x-amz-meta-a": " b ", "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="}, auth_path=resource)
    botocore.auth.HmacV1Auth(creds()).add_auth(req)
    http = to_http(req)
    auth = parse(http, service="s3", sigv2_resource=resource)
    assert auth.scheme is Scheme.V2_HEADER and auth.access_key == AK
    v = verify(auth, http, SK, now=NOW)
    assert v.payload_mode is PayloadMode.NONE
    with pytest.raises(SignatureDoesNotMatch):
        verify(auth, http, SK + "!", now=NOW)
    with pytest.raises(RequestTimeTooSkewed):
        verify(auth, http, SK, now=NOW + timedelta(minutes=20))
    if query:
        # the sub-resources are signed: dropping the query changes the resource
        bare = HttpRequest(http.method, http.path, "", http.headers)
        with pytest.raises(SignatureDoesNotMatch):
            verify(parse(bare, service="s3", sigv2_resource=resource), bare, SK, now=NOW)


def test_s3_header_tampered_header():
    req = botocore_request("PUT", "http://walrus.example/b/k", headers={"x-amz-acl": "private"})
    botocore.auth.HmacV1Auth(creds()).add_auth(req)
    http = to_http(req)
    bad = HttpRequest(http.method, http.path, http.query, {**http.headers, "x-amz-acl": "public-read"})
    with pytest.raises(SignatureDoesNotMatch):
        verify(parse(bad, service="s3"), bad, SK, now=NOW)


@pytest.mark.parametrize("key", KEYS)
def test_s3_presigned(key):
    enc = quote(key, safe="/~")
    req = botocore_request("GET", f"http://walrus.example/services/objectstorage/bucket/{enc}", params={"response-content-disposition": "attachment; filename=\"a b\""}, auth_path=f"/bucket/{enc}")
    botocore.auth.HmacV1QueryAuth(creds(), expires=300).add_auth(req)
    http = to_http(req)
    auth = parse(http, service="s3", sigv2_resource=f"/bucket/{enc}")
    assert auth.scheme is Scheme.V2_QUERY
    verify(auth, http, SK, now=NOW + timedelta(seconds=299))
    with pytest.raises(AccessDenied, match="expired"):
        verify(auth, http, SK, now=NOW + timedelta(seconds=301))
    with pytest.raises(SignatureDoesNotMatch):
        verify(parse(http, service="s3", sigv2_resource="/bucket/other"), http, SK, now=NOW)


def test_s3_presigned_missing_expires():
    http = HttpRequest("GET", "/b/k", "AWSAccessKeyId=A&Signature=x", {"host": "h"})
    with pytest.raises(AccessDenied):
        parse(http, service="s3")


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_ec2_query_v2(method):
    params = {"Action": "DescribeImages", "Version": "2016-11-15", "Owner.1": "self", "Filter.1.Value": "a b~c+d"}
    url = "http://control.example:8773/services/compute/"
    if method == "GET":
        req = botocore_request("GET", url, params=params)
    else:
        req = botocore_request("POST", url, data=dict(params))
    botocore.auth.SigV2Auth(creds()).add_auth(req)
    now = datetime.now(timezone.utc)
    from botocore.utils import percent_encode_sequence

    if method == "GET":
        http = HttpRequest("GET", "/services/compute/", percent_encode_sequence(req.params), {"host": "control.example:8773"})
        form = None
    else:
        http = HttpRequest("POST", "/services/compute/", "", {"host": "control.example:8773"})
        form = percent_encode_sequence(req.data)
    auth = parse(http, service="ec2", form=form)
    assert auth.scheme is Scheme.V2_EC2_QUERY and auth.access_key == AK
    v = verify(auth, http, SK, now=now)
    assert v.payload_mode is PayloadMode.NONE
    with pytest.raises(SignatureDoesNotMatch):
        verify(auth, http, "wrong", now=now)
    with pytest.raises(RequestTimeTooSkewed) as err:
        verify(auth, http, SK, now=now + timedelta(hours=1))
    assert err.value.code_for("ec2") == ("RequestExpired", 400)


def test_ec2_v2_ours_roundtrip_and_tamper():
    params = sign_v2_ec2("GET", "Control.Example", "/", {"Action": "RunInstances", "ImageId": "emi-1234"}, access_key=AK, secret=SK, now=NOW)
    from botocore.utils import percent_encode_sequence

    http = HttpRequest("GET", "/", percent_encode_sequence(params), {"host": "control.example"})
    verify(parse(http, service="ec2"), http, SK, now=NOW)
    bad = HttpRequest("GET", "/", percent_encode_sequence({**params, "ImageId": "emi-9999"}), {"host": "control.example"})
    with pytest.raises(SignatureDoesNotMatch):
        verify(parse(bad, service="ec2"), bad, SK, now=NOW)
