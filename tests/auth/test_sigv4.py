"""SigV4 (header and presigned) against botocore's signers: what botocore signs, we verify."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import botocore.auth
import pytest
from authhelpers import AK, NOW, SK, botocore_request, creds, freeze_botocore, to_http

from eucalypt.auth import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
    HttpRequest,
    InvalidRequest,
    PayloadMode,
    RequestTimeTooSkewed,
    Scheme,
    SignatureDoesNotMatch,
    XAmzContentSHA256Mismatch,
    check_payload_sha256,
    parse,
    verify,
)

KEYS = [
    "plain.txt",
    "with space/and more spaces.bin",
    "unicodé/ключ/鍵.dat",
    "plus+sign+key",
    "tilde~and=equals",
    "percent%25literal%2Fslash",
    "semi;colon,comma(paren)!*'@$&",
    "dir//double//slashes/./dots/../x",
]
QUERIES = [
    {},
    {"prefix": "a b+c~d=e%f", "delimiter": "/"},
    {"list-type": "2", "start-after": "ünïcode key", "max-keys": "10"},
    {"acl": ""},
    {"uploads": "", "prefix": "x"},
]
REGIONS = ["us-east-1", "eucalyptus", "moon-1"]


def _body_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def _frozen(monkeypatch):
    freeze_botocore(monkeypatch)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("query", QUERIES, ids=lambda q: "&".join(q) or "noquery")
@pytest.mark.parametrize("style", ["path", "vhost", "prefixed"])
def test_s3_header_roundtrip(key, query, style):
    from urllib.parse import quote

    encoded_key = quote(key, safe="/~")
    if style == "path":
        url = f"http://walrus.example:8774/bucket/{encoded_key}"
    elif style == "vhost":
        url = f"http://bucket.walrus.example:8774/{encoded_key}"
    else:
        url = f"http://walrus.example:8774/services/objectstorage/bucket/{encoded_key}"
    body = b"hello walrus"
    req = botocore_request("PUT", url, params=query, data=body, headers={"Content-Type": "text/plain", "x-amz-meta-Color": "  blue   green "})
    botocore.auth.S3SigV4Auth(creds(), "s3", "eucalyptus").add_auth(req)
    http = to_http(req)
    auth = parse(http, service="s3")
    assert auth.scheme is Scheme.V4_HEADER and auth.access_key == AK and auth.region == "eucalyptus"
    v = verify(auth, http, SK, now=NOW)
    assert v.payload_mode is PayloadMode.SIGNED
    assert v.payload_sha256 == _body_sha(body)
    check_payload_sha256(v, _body_sha(body))
    with pytest.raises(XAmzContentSHA256Mismatch):
        check_payload_sha256(v, _body_sha(b"other"))
    with pytest.raises(XAmzContentSHA256Mismatch):
        verify(auth, http, SK, now=NOW, body_sha256=_body_sha(b"other"))


@pytest.mark.parametrize("region", REGIONS)
def test_regions_accepted(region):
    req = botocore_request("GET", "http://walrus.example/b/k")
    botocore.auth.S3SigV4Auth(creds(), "s3", region).add_auth(req)
    http = to_http(req)
    v = verify(parse(http, service="s3"), http, SK, now=NOW)
    assert v.region == region


def _signed_get(url="http://walrus.example/b/k", **kw):
    req = botocore_request("GET", url, **kw)
    botocore.auth.S3SigV4Auth(creds(), "s3", "us-east-1").add_auth(req)
    return to_http(req)


def _replace(http: HttpRequest, **changes) -> HttpRequest:
    fields = dict(method=http.method, path=http.path, query=http.query, headers=dict(http.headers))
    fields.update(changes)
    return HttpRequest(**fields)


def test_wrong_secret():
    http = _signed_get()
    with pytest.raises(SignatureDoesNotMatch) as err:
        verify(parse(http, service="s3"), http, SK + "x", now=NOW)
    assert err.value.status == 403 and err.value.code == "SignatureDoesNotMatch"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h: _replace(h, path="/b/k2"),
        lambda h: _replace(h, path="/b/%6B"),  # same key, different bytes on the wire
        lambda h: _replace(h, query="x=1"),
        lambda h: _replace(h, method="DELETE"),
        lambda h: _replace(h, headers={**h.headers, "x-amz-date": "20240517T123046Z"}),
        lambda h: _replace(h, headers={**h.headers, "host": "evil.example"}),
        lambda h: _replace(h, headers={**h.headers, "x-amz-content-sha256": hashlib.sha256(b"x").hexdigest()}),
    ],
    ids=["path", "path-encoding", "query", "method", "date", "host", "body-hash"],
)
def test_tampered(tamper):
    http = tamper(_signed_get())
    with pytest.raises(SignatureDoesNotMatch):
        verify(parse(http, service="s3"), http, SK, now=NOW)


def test_unsigned_amz_header_refused():
    http = _signed_get()
    http = _replace(http, headers={**http.headers, "x-amz-acl": "public-read"})
    with pytest.raises(AccessDenied):
        parse(http, service="s3")


def test_skew():
    http = _signed_get()
    auth = parse(http, service="s3")
    verify(auth, http, SK, now=NOW + timedelta(minutes=14))
    for delta in (timedelta(minutes=16), -timedelta(minutes=16)):
        with pytest.raises(RequestTimeTooSkewed) as err:
            verify(auth, http, SK, now=NOW + delta)
        assert err.value.status == 403


@pytest.mark.parametrize(
    "header",
    [
        "AWS4-HMAC-SHA256 Credential=AKID/20240517/us-east-1/s3/aws4_request, SignedHeaders=host",
        "AWS4-HMAC-SHA256 Credential=AKID/20240517/us-east-1/s3, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKID/20240517/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKID/20240518/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKID/20240517/us-east-1/s3/aws5_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKID/20240517/us-east-1/s3/aws4_request, SignedHeaders=x-amz-date, Signature=00",
        "AWS4-HMAC-SHA256 garbage",
        "Bearer abc",
    ],
)
def test_malformed_authorization(header):
    http = _signed_get()
    http = _replace(http, headers={**http.headers, "authorization": header})
    with pytest.raises(AuthorizationHeaderMalformed) as err:
        parse(http, service="s3")
    assert err.value.status == 400


def test_s3_requires_content_sha256():
    http = _signed_get()
    headers = {k: v for k, v in http.headers.items() if k != "x-amz-content-sha256"}
    with pytest.raises(InvalidRequest):
        parse(_replace(http, headers=headers), service="s3")


def test_anonymous():
    assert parse(HttpRequest("GET", "/b/k", "prefix=a", {"host": "x"}), service="s3") is None


def test_unsigned_payload_over_https():
    req = botocore_request("PUT", "https://walrus.example/b/k", data=b"abc")
    from botocore.config import Config

    req.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    botocore.auth.S3SigV4Auth(creds(), "s3", "us-east-1").add_auth(req)
    http = to_http(req)
    v = verify(parse(http, service="s3"), http, SK, now=NOW)
    assert v.payload_mode is PayloadMode.UNSIGNED and v.payload_sha256 is None


# ---------------------------------------------------------------- presigned


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("region", REGIONS)
def test_presigned_roundtrip(key, region):
    from urllib.parse import quote

    req = botocore_request("GET", f"http://walrus.example:8774/bucket/{quote(key, safe='/~')}", params={"response-content-type": "text/plain; x=y"})
    botocore.auth.S3SigV4QueryAuth(creds(), "s3", region, expires=600).add_auth(req)
    http = to_http(req)
    auth = parse(http, service="s3")
    assert auth.scheme is Scheme.V4_QUERY and auth.expires == 600
    v = verify(auth, http, SK, now=NOW + timedelta(seconds=599))
    assert v.payload_mode is PayloadMode.UNSIGNED
    with pytest.raises(AccessDenied, match="expired"):
        verify(auth, http, SK, now=NOW + timedelta(seconds=601))
    with pytest.raises(SignatureDoesNotMatch):
        verify(auth, http, "nope", now=NOW)


def test_presigned_reencoded_query_still_verifies():
    """Clients and proxies encode differently (%7E for '~', lowercase hex); we re-encode canonically."""
    req = botocore_request("GET", "http://walrus.example/bucket/k", params={"prefix": "a~b/c d"})
    botocore.auth.S3SigV4QueryAuth(creds(), "s3", "moon-1").add_auth(req)
    http = to_http(req)
    odd = http.query.replace("~", "%7E").replace("%2F", "%2f").replace("%20", "+")
    other = _replace(http, query=odd)
    verify(parse(other, service="s3"), other, SK, now=NOW)


def test_presigned_tampered_query():
    req = botocore_request("GET", "http://walrus.example/bucket/k", params={"versionId": "1"})
    botocore.auth.S3SigV4QueryAuth(creds(), "s3", "us-east-1").add_auth(req)
    http = to_http(req)
    bad = _replace(http, query=http.query.replace("versionId=1", "versionId=2"))
    with pytest.raises(SignatureDoesNotMatch):
        verify(parse(bad, service="s3"), bad, SK, now=NOW)


@pytest.mark.parametrize(
    "edit",
    [
        lambda q: q.replace("X-Amz-Expires=3600", "X-Amz-Expires=604801"),
        lambda q: q.replace("X-Amz-Expires=3600", "X-Amz-Expires=-1"),
        lambda q: q.replace("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA512"),
        lambda q: q.replace("&X-Amz-SignedHeaders=host", ""),
        lambda q: q.replace("%2Fs3%2F", "%2Fec2%2F"),
        lambda q: q + "&X-Amz-Signature=00",
    ],
    ids=["too-long", "negative", "algorithm", "no-signed-headers", "service", "twice"],
)
def test_presigned_bad_parameters(edit):
    req = botocore_request("GET", "http://walrus.example/bucket/k")
    botocore.auth.S3SigV4QueryAuth(creds(), "s3", "us-east-1").add_auth(req)
    http = to_http(req)
    bad = _replace(http, query=edit(http.query))
    with pytest.raises(AuthorizationQueryParametersError) as err:
        parse(bad, service="s3")
    assert err.value.status == 400


# ---------------------------------------------------------------- EC2 (non-S3 service)


def test_ec2_sigv4_form_post():
    form = "Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag%3AName&Filter.1.Value.1=a%20b"
    req = botocore_request(
        "POST",
        "http://control.example:8773/services/compute/",
        data=form.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    botocore.auth.SigV4Auth(creds(), "ec2", "eucalyptus").add_auth(req)
    http = to_http(req)
    auth = parse(http, service="ec2", form=form)
    assert auth.scheme is Scheme.V4_HEADER
    v = verify(auth, http, SK, now=NOW, body_sha256=_body_sha(form.encode()))
    assert v.payload_mode is PayloadMode.SIGNED
    with pytest.raises(SignatureDoesNotMatch):
        verify(auth, http, SK, now=NOW, body_sha256=_body_sha(b"Action=TerminateInstances"))
    with pytest.raises(AuthorizationHeaderMalformed) as err:
        parse(http, service="s3")
    assert err.value.code_for("ec2") == ("IncompleteSignature", 400)


@pytest.mark.parametrize("path", ["/", "/services/Eucalyptus/", "/a/./b/../c//d", "/with%20space/~x"])
def test_ec2_sigv4_path_normalisation(path):
    req = botocore_request("GET", f"http://control.example{path}", params={"Action": "DescribeRegions"})
    botocore.auth.SigV4Auth(creds(), "ec2", "us-east-1").add_auth(req)
    http = to_http(req)
    verify(parse(http, service="ec2"), http, SK, now=NOW)
