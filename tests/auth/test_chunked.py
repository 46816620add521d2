"""aws-chunked decoding: the AWS known-answer example, botocore's unsigned-trailer bodies, tampering, any split."""

from __future__ import annotations

import hashlib
import io
import random
from datetime import datetime, timezone

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from eucalypt.auth import (
    AwsChunkedDecoder,
    HttpRequest,
    IncompleteBody,
    InvalidArgument,
    PayloadMode,
    SignatureDoesNotMatch,
    Verified,
    crc32_b64,
    parse,
    sign_v4,
    verify,
)
from eucalypt.auth.chunked import chunk_signature, trailer_signature

# The example in the S3 docs, "sigv4-streaming": PUT examplebucket/chunkObject.txt, 64 KiB + 1 KiB of 'a'.
EX_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EX_NOW = datetime(2013, 5, 24, tzinfo=timezone.utc)
EX_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
EX_CHUNK_SIGS = [
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
]
EX_HEADERS = {
    "Host": "s3.amazonaws.com",
    "x-amz-date": "20130524T000000Z",
    "x-amz-storage-class": "REDUCED_REDUNDANCY",
    "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
    "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
    "x-amz-decoded-content-length;x-amz-storage-class,Signature=" + EX_SEED,
    "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "Content-Encoding": "aws-chunked",
    "x-amz-decoded-content-length": "66560",
    "Content-Length": "66824",
}
EX_PAYLOAD = b"a" * 66560


def _example_body() -> bytes:
    parts = [(b"a" * 65536, EX_CHUNK_SIGS[0]), (b"a" * 1024, EX_CHUNK_SIGS[1]), (b"", EX_CHUNK_SIGS[2])]
    return b"".join(b"%x;chunk-signature=%s\r\n%s\r\n" % (len(d), s.encode(), d) for d, s in parts)


def _example_verified() -> Verified:
    req = HttpRequest("PUT", "/examplebucket/chunkObject.txt", "", EX_HEADERS)
    v = verify(parse(req, service="s3"), req, EX_SECRET, now=EX_NOW)
    assert v.payload_mode is PayloadMode.STREAMING_SIGNED
    assert v.seed.seed_signature == EX_SEED and v.decoded_content_length == 66560
    return v


def test_known_answer_seed_and_chunks():
    body = _example_body()
    assert len(body) == 66824
    dec = AwsChunkedDecoder(_example_verified())
    assert dec.feed(body) == EX_PAYLOAD
    assert dec.finish() == {}


def test_known_answer_chunk_signature_function():
    v = _example_verified()
    s = v.seed
    sig1 = chunk_signature(s.signing_key, s.amz_date, s.scope, EX_SEED, hashlib.sha256(b"a" * 65536).hexdigest())
    assert sig1 == EX_CHUNK_SIGS[0]


def _feed_in_pieces(dec: AwsChunkedDecoder, body: bytes, sizes) -> bytes:
    out = bytearray()
    pos = 0
    for n in sizes:
        if pos >= len(body):
            break
        out += dec.feed(body[pos : pos + n])
        pos += n
    out += dec.feed(body[pos:])
    return bytes(out)


def test_known_answer_one_byte_at_a_time():
    body = _example_body()
    dec = AwsChunkedDecoder(_example_verified())
    out = bytearray()
    released_at = []
    for i in range(len(body)):
        got = dec.feed(body[i : i + 1])
        if got:
            released_at.append(i)
        out += got
    assert bytes(out) == EX_PAYLOAD
    # bytes of a signed chunk come out only once the whole chunk (and so its signature) is in
    assert len(released_at) == 2
    dec.finish()


def test_known_answer_random_splits():
    body = _example_body()
    rng = random.Random(7)
    for _ in range(20):
        dec = AwsChunkedDecoder(_example_verified())
        sizes = [rng.choice([1, 2, 3, 7, 64, 85, 86, 87, 1000, 65536]) for _ in range(400)]
        assert _feed_in_pieces(dec, body, sizes) == EX_PAYLOAD
        dec.finish()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.replace(b"a" * 10, b"a" * 9 + b"b", 1),  # tampered data
        lambda b: b.replace(EX_CHUNK_SIGS[1].encode(), b"0" * 64),  # tampered signature
        lambda b: b.replace(EX_CHUNK_SIGS[2].encode(), EX_CHUNK_SIGS[1].encode()),  # replayed signature
    ],
    ids=["data", "signature", "replay"],
)
def test_tampered_chunks(mutate):
    dec = AwsChunkedDecoder(_example_verified())
    with pytest.raises(SignatureDoesNotMatch):
        dec.feed(mutate(_example_body()))


def test_tampered_chunk_releases_nothing_of_it():
    body = bytearray(_example_body())
    body[100] ^= 1  # inside the first chunk
    dec = AwsChunkedDecoder(_example_verified())
    got = bytearray()
    with pytest.raises(SignatureDoesNotMatch):
        for i in range(len(body)):
            got += dec.feed(bytes(body[i : i + 1]))
    assert got == b""


@pytest.mark.parametrize("cut", [0, 10, 85, 86, 100, 65536, 65700, 66822, 66823])
def test_truncated(cut):
    body = _example_body()
    dec = AwsChunkedDecoder(_example_verified())
    dec.feed(body[: len(body) - 66824 + cut] if cut else b"")
    with pytest.raises(IncompleteBody):
        dec.finish()


def test_garbage_after_end_and_bad_framing():
    dec = AwsChunkedDecoder(_example_verified())
    with pytest.raises(InvalidArgument):
        dec.feed(_example_body() + b"x")
    dec = AwsChunkedDecoder(_example_verified())
    with pytest.raises(InvalidArgument):
        dec.feed(b"zz;chunk-signature=00\r\n")
    dec = AwsChunkedDecoder(_example_verified())
    with pytest.raises(InvalidArgument):
        dec.feed(b"2000000;chunk-signature=00\r\n")  # 32 MiB > limit
    dec = AwsChunkedDecoder(_example_verified())
    with pytest.raises(InvalidArgument):
        dec.feed(b"1" * 5000)  # a header line that never ends


# ------------------------------------------------------- signed chunks with a signed trailer (we encode)


def encode_signed(verified: Verified, payload: bytes, chunk: int, trailers: dict[str, str] | None) -> bytes:
    """An aws-chunked body per the S3 docs, chunks (and optionally trailers) signed from the seed."""
    s = verified.seed
    prev = s.seed_signature
    out = bytearray()
    pieces = [payload[i : i + chunk] for i in range(0, len(payload), chunk)] + [b""]
    for data in pieces:
        prev = chunk_signature(s.signing_key, s.amz_date, s.scope, prev, hashlib.sha256(data).hexdigest())
        out += b"%x;chunk-signature=%s\r\n" % (len(data), prev.encode())
        if data or trailers is None:
            out += data + b"\r\n"
    if trailers is not None:
        for name, value in trailers.items():
            out += f"{name}:{value}\r\n".encode()
        sig = trailer_signature(s.signing_key, s.amz_date, s.scope, prev, trailers)
        out += f"x-amz-trailer-signature:{sig}\r\n\r\n".encode()
    return bytes(out)


NOW = datetime(2024, 5, 17, 12, 0, tzinfo=timezone.utc)


def _streaming_verified(mode: str, payload: bytes, trailer: str | None = None) -> Verified:
    headers = {"host": "walrus.example", "content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(payload))}
    if trailer:
        headers["x-amz-trailer"] = trailer
    req = HttpRequest("PUT", "/b/k", "", headers)
    req = HttpRequest("PUT", "/b/k", "", {**headers, **sign_v4(req, access_key="AK", secret="SK", region="moon-1", service="s3", now=NOW, payload_sha256=mode)})
    return verify(parse(req, service="s3"), req, "SK", now=NOW)


@pytest.mark.parametrize("size", [0, 1, 8191, 8192, 20000])
def test_signed_trailer_roundtrip(size):
    payload = bytes(random.Random(size).randbytes(size))
    v = _streaming_verified("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER", payload, "x-amz-checksum-crc32")
    assert v.payload_mode is PayloadMode.STREAMING_SIGNED_TRAILER and v.trailers == ("x-amz-checksum-crc32",)
    body = encode_signed(v, payload, 8192, {"x-amz-checksum-crc32": crc32_b64(payload)})
    for step in (1, 5, len(body) or 1):
        dec = AwsChunkedDecoder(v)
        assert _feed_in_pieces(dec, body, [step] * len(body)) == payload
        assert dec.finish() == {"x-amz-checksum-crc32": crc32_b64(payload)}


def test_signed_trailer_tampered():
    payload = b"x" * 100
    v = _streaming_verified("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER", payload, "x-amz-checksum-crc32")
    body = encode_signed(v, payload, 64, {"x-amz-checksum-crc32": crc32_b64(payload)})
    bad = body.replace(crc32_b64(payload).encode(), crc32_b64(b"other").encode())
    with pytest.raises(SignatureDoesNotMatch):
        AwsChunkedDecoder(v).feed(bad)
    cut = body[: body.index(b"x-amz-trailer-signature")] + b"\r\n"
    dec = AwsChunkedDecoder(v)
    with pytest.raises(IncompleteBody):
        dec.feed(cut)


def test_signed_no_trailer_roundtrip_and_length_check():
    payload = b"hello" * 3000
    v = _streaming_verified("STREAMING-AWS4-HMAC-SHA256-PAYLOAD", payload)
    body = encode_signed(v, payload, 4096, None)
    dec = AwsChunkedDecoder(v)
    assert dec.feed(body) == payload
    dec.finish()
    # a body shorter than x-amz-decoded-content-length (but well framed) is incomplete
    v_long = _streaming_verified("STREAMING-AWS4-HMAC-SHA256-PAYLOAD", payload + b"!")
    dec = AwsChunkedDecoder(v_long)
    dec.feed(encode_signed(v_long, payload, 4096, None))
    with pytest.raises(IncompleteBody):
        dec.finish()


# ------------------------------------------------------- STREAMING-UNSIGNED-PAYLOAD-TRAILER, as botocore encodes it


@pytest.mark.parametrize("size", [0, 1, 1000, 70000])
def test_botocore_unsigned_trailer_body(size):
    payload = random.Random(size).randbytes(size)
    body = b"".join(AwsChunkedWrapper(io.BytesIO(payload), checksum_cls=Crc32Checksum, checksum_name="x-amz-checksum-crc32", chunk_size=16384))
    v = _streaming_verified("STREAMING-UNSIGNED-PAYLOAD-TRAILER", payload, "x-amz-checksum-crc32")
    assert v.payload_mode is PayloadMode.STREAMING_UNSIGNED_TRAILER and v.seed is None
    dec = AwsChunkedDecoder(v)
    out = bytearray()
    for i in range(0, len(body), 3):
        out += dec.feed(body[i : i + 3])
    assert bytes(out) == payload
    assert dec.finish() == {"x-amz-checksum-crc32": crc32_b64(payload)}


def test_unsigned_trailer_undeclared_and_truncated():
    payload = b"abc"
    v = _streaming_verified("STREAMING-UNSIGNED-PAYLOAD-TRAILER", payload, "x-amz-checksum-crc32")
    with pytest.raises(InvalidArgument):
        AwsChunkedDecoder(v).feed(b"3\r\nabc\r\n0\r\nx-amz-checksum-sha1:AAAA\r\n\r\n")
    dec = AwsChunkedDecoder(v)
    dec.feed(b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAA\r\n")
    with pytest.raises(IncompleteBody):
        dec.finish()
