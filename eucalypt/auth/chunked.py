"""Incremental, sans-I/O decoder of aws-chunked bodies (SigV4 streaming uploads).

Framing (``sigv4-streaming`` and ``sigv4-streaming-trailers`` in the S3 docs)::

    hex-size;chunk-signature=<sig>\\r\\n <data> \\r\\n      ... signed variants
    hex-size\\r\\n <data> \\r\\n                           ... STREAMING-UNSIGNED-PAYLOAD-TRAILER
    0[;chunk-signature=<sig>]\\r\\n                         final, empty chunk
    then: \\r\\n                                            (no trailer)
    or:   name:value\\r\\n ... [x-amz-trailer-signature:<sig>\\r\\n] \\r\\n

A signed chunk's bytes are released only after its signature checked out, so a tampered
chunk never reaches storage; that means holding one chunk (clients use 64 KiB to 1 MiB,
we refuse more than ``max_chunk_size``). Unsigned chunks stream straight through.
"""

from __future__ import annotations

import enum
import hashlib
import hmac

from ._sigv4 import EMPTY_SHA256
from .errors import IncompleteBody, InvalidArgument, InvalidRequest, SignatureDoesNotMatch
from .request import PayloadMode, Verified

MAX_CHUNK_SIZE = 16 * 1024 * 1024
_MAX_LINE = 4096  # a chunk header or trailer line; real ones are < 200 bytes
TRAILER_SIGNATURE = "x-amz-trailer-signature"


class _State(enum.Enum):
    HEADER = enum.auto()
    DATA = enum.auto()
    DATA_CRLF = enum.auto()
    FINAL_CRLF = enum.auto()
    TRAILER = enum.auto()
    DONE = enum.auto()


def chunk_signature(signing_key: bytes, amz_date: str, scope: str, previous: str, data_sha256: str) -> str:
    """The signature of one chunk, chained to the previous one (the seed for the first chunk)."""
    sts = f"AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{previous}\n{EMPTY_SHA256}\n{data_sha256}"
    return hmac.new(signing_key, sts.encode(), hashlib.sha256).hexdigest()


def trailer_signature(signing_key: bytes, amz_date: str, scope: str, previous: str, trailers: dict[str, str]) -> str:
    """The x-amz-trailer-signature: over "name:value\\n" lines of the trailers, in the order sent."""
    canonical = "".join(f"{name}:{value}\n" for name, value in trailers.items())
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    sts = f"AWS4-HMAC-SHA256-TRAILER\n{amz_date}\n{scope}\n{previous}\n{digest}"
    return hmac.new(signing_key, sts.encode(), hashlib.sha256).hexdigest()


class AwsChunkedDecoder:
    """Feed the raw body in any slices; get the decoded payload back as it becomes safe to use."""

    def __init__(self, verified: Verified, *, max_chunk_size: int = MAX_CHUNK_SIZE) -> None:
        mode = verified.payload_mode
        if not mode.is_streaming:
            raise InvalidRequest(f"payload mode {mode.name} is not aws-chunked")
        self._signed = mode in (PayloadMode.STREAMING_SIGNED, PayloadMode.STREAMING_SIGNED_TRAILER)
        self._has_trailer = mode in (PayloadMode.STREAMING_SIGNED_TRAILER, PayloadMode.STREAMING_UNSIGNED_TRAILER)
        self._trailer_signed = mode is PayloadMode.STREAMING_SIGNED_TRAILER
        if self._signed and verified.seed is None:
            raise InvalidRequest("signed streaming needs the seed from verify()")
        self._seed = verified.seed
        self._previous = verified.seed.seed_signature if verified.seed else ""
        self._declared = set(verified.trailers)
        self._expected_length = verified.decoded_content_length
        self._max_chunk = max_chunk_size
        self._buf = bytearray()
        self._state = _State.HEADER
        self._remaining = 0
        self._chunk_sig = ""
        self._chunk = bytearray()
        self._hasher = hashlib.sha256()
        self._trailers: dict[str, str] = {}
        self._trailer_sig_seen = False
        self.decoded_length = 0

    # -- public

    def feed(self, data: bytes) -> bytes:
        """Consume ``data``; return the payload bytes that are now complete (and verified)."""
        self._buf += data
        out = bytearray()
        while self._step(out):
            pass
        if self._expected_length is not None and self.decoded_length > self._expected_length:
            raise InvalidArgument("the body is longer than x-amz-decoded-content-length")
        return bytes(out)

    def finish(self) -> dict[str, str]:
        """Declare the body complete; return the trailers (lowercase names, without the trailer signature)."""
        if self._state is not _State.DONE:
            raise IncompleteBody("The request body ended before the final aws-chunked chunk")
        if self._expected_length is not None and self.decoded_length != self._expected_length:
            raise IncompleteBody(
                f"decoded {self.decoded_length} bytes, x-amz-decoded-content-length says {self._expected_length}"
            )
        return dict(self._trailers)

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    # -- state machine; each step returns False when it needs more input

    def _line(self) -> str | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > _MAX_LINE:
                raise InvalidArgument("aws-chunked header line too long")
            return None
        if end > _MAX_LINE:
            raise InvalidArgument("aws-chunked header line too long")
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        try:
            return line.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidArgument("aws-chunked header is not ASCII") from None

    def _step(self, out: bytearray) -> bool:
        state = self._state
        if state is _State.HEADER:
            line = self._line()
            if line is None:
                return False
            self._start_chunk(line)
            return True
        if state is _State.DATA:
            if not self._buf:
                return False
            take = min(self._remaining, len(self._buf))
            piece = memoryview(self._buf)[:take]
            try:
                if self._signed:
                    self._chunk += piece
                    self._hasher.update(piece)
                else:
                    out += piece
            finally:
                piece.release()
            del self._buf[:take]
            self._remaining -= take
            self.decoded_length += take
            if self._remaining == 0:
                if self._signed:
                    self._check_chunk(self._hasher.hexdigest())
                    out += self._chunk
                    self._chunk = bytearray()
                self._state = _State.DATA_CRLF
            return True
        if state in (_State.DATA_CRLF, _State.FINAL_CRLF):
            if len(self._buf) < 2:
                return False
            if self._buf[:2] != b"\r\n":
                raise InvalidArgument("aws-chunked chunk data is not followed by CRLF")
            del self._buf[:2]
            self._state = _State.HEADER if state is _State.DATA_CRLF else _State.DONE
            return True
        if state is _State.TRAILER:
            line = self._line()
            if line is None:
                return False
            self._trailer_line(line)
            return True
        if self._buf:  # DONE
            raise InvalidArgument("data after the end of the aws-chunked body")
        return False

    def _start_chunk(self, line: str) -> None:
        size_text, _, ext = line.partition(";")
        try:
            size = int(size_text, 16)
        except ValueError:
            raise InvalidArgument(f"bad aws-chunked chunk size {size_text[:20]!r}") from None
        if size < 0 or size_text.strip() != size_text or size_text.startswith(("+", "-", "0x", "0X")):
            raise InvalidArgument(f"bad aws-chunked chunk size {size_text[:20]!r}")
        if size > self._max_chunk:
            raise InvalidArgument(f"aws-chunked chunk of {size} bytes exceeds the limit of {self._max_chunk}")
        if self._signed:
            name, sep, sig = ext.partition("=")
            if name != "chunk-signature" or not sep or not sig:
                raise IncompleteBody("aws-chunked chunk header lacks its chunk-signature")
            self._chunk_sig = sig
        if size == 0:
            if self._signed:
                self._check_chunk(EMPTY_SHA256)
            self._state = _State.TRAILER if self._has_trailer else _State.FINAL_CRLF
        else:
            self._remaining = size
            self._hasher = hashlib.sha256()
            self._state = _State.DATA

    def _check_chunk(self, data_sha256: str) -> None:
        seed = self._seed
        expected = chunk_signature(seed.signing_key, seed.amz_date, seed.scope, self._previous, data_sha256)
        if not hmac.compare_digest(expected.encode(), self._chunk_sig.encode()):
            raise SignatureDoesNotMatch("The chunk signature we calculated does not match the one you provided.")
        self._previous = expected

    def _trailer_line(self, line: str) -> None:
        if not line:
            # A blank line ends the trailers - unless it is a separator some clients put
            # between the final chunk and a signed trailer section that has not come yet.
            if self._trailer_signed and not self._trailer_sig_seen:
                if not self._trailers:
                    return
                raise IncompleteBody("the trailer section lacks x-amz-trailer-signature")
            self._state = _State.DONE
            return
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name:
            raise InvalidArgument(f"bad aws-chunked trailer line {line[:40]!r}")
        if self._trailer_sig_seen:
            raise InvalidArgument("trailer after x-amz-trailer-signature")
        if name == TRAILER_SIGNATURE:
            if not self._trailer_signed:
                raise InvalidArgument("x-amz-trailer-signature in an unsigned trailer")
            seed = self._seed
            expected = trailer_signature(seed.signing_key, seed.amz_date, seed.scope, self._previous, self._trailers)
            if not hmac.compare_digest(expected.encode(), value.strip().encode()):
                raise SignatureDoesNotMatch("The trailer signature we calculated does not match the one you provided.")
            self._trailer_sig_seen = True
            return
        if self._declared and name not in self._declared:
            raise InvalidArgument(f"trailer {name!r} was not declared in x-amz-trailer")
        if name in self._trailers:
            raise InvalidArgument(f"trailer {name!r} sent twice")
        self._trailers[name] = value.strip()
