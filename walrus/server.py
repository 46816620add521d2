"""The Walrus server: an aiohttp application in front of the storage engine.

    server = WalrusServer(WalrusConfig(data_dir=path, port=0))
    await server.start()      # server.url is now http://127.0.0.1:<port>
    ...
    await server.stop()

Each request: operational paths (/_eucalypt/...) first; then addressing and routing
(pure, walrus/s3/router.py), authentication (eucalypt.auth), and the operation's handler.
Every failure becomes the S3 error document with the right status, and every response
carries x-amz-request-id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from eucalypt.auth import AuthError, HttpRequest, Scheme, SignatureDoesNotMatch, parse, verify
from eucalypt.clock import SystemClock

from .metrics import WalrusMetrics
from .s3.context import Context
from .s3.errors import S3Error
from .s3.handlers import OPERATIONS
from .s3.router import address, route
from .s3.xml import error_document
from .storage.engine import Engine
from .storage.errors import CorruptChunk
from .users import (DirectoryUnavailable, StaticUsers, User, UserDirectory, canonical_id_for,
                    generated_admin, load_users_file)

log = logging.getLogger("eucalypt.walrus")

OPS_PREFIX = "/_eucalypt/"
MAX_HEADER_SECTION = 8 * 1024  # S3's limit on the request header section
PARSER_LINE_LIMIT = 64 * 1024  # aiohttp's per-line limit (request line, one header field)


@dataclass
class WalrusConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8774
    users_file: Path | None = None
    # Virtual-host style: BUCKET.<domain>[:port] addresses BUCKET.
    domains: tuple[str, ...] = ("localhost",)
    region: str = "us-east-1"
    # The identity aws-exec-read grants READ to (the cloud's image cache).
    system_user: str = "eucalypt"
    # Multipart uploads untouched for this long are aborted and their parts collected.
    upload_expiry_seconds: float = 7 * 24 * 3600
    upload_sweep_interval: float = 3600
    chunk_size: int | None = None
    inline_limit: int | None = None


@dataclass
class WalrusService:
    """What handlers may use: the engine, users, metrics, configuration."""

    engine: Engine
    users: UserDirectory
    metrics: WalrusMetrics
    config: WalrusConfig
    clock: SystemClock = field(default_factory=SystemClock)

    @property
    def region(self) -> str:
        return self.config.region

    system_seed: str = ""  # from the user directory when it knows the cloud's identity

    @property
    def system_canonical_id(self) -> str:
        return canonical_id_for(self.system_seed or self.config.system_user)

    async def send_body(self, ctx: Context, response: web.StreamResponse, record, start: int, end: int) -> None:
        """Stream [start, end) of an object. The first piece is read before the headers go
        out, so a missing or corrupt chunk is still answered with a proper error."""
        pieces = self.engine.read_range(record, start, end).__aiter__()
        first = b""
        if end > start:
            try:
                first = await pieces.__anext__()
            except StopAsyncIteration:
                first = b""
        stamp_response(response, ctx.request_id)
        await response.prepare(ctx.request)
        sent = 0
        try:
            if first:
                await response.write(first)
                sent += len(first)
            async for piece in pieces:
                await response.write(piece)
                sent += len(piece)
        finally:
            self.metrics.bytes_sent.inc(sent)
            with contextlib.suppress(Exception):
                await pieces.aclose()
        await response.write_eof()


def stamp_response(response: web.StreamResponse, request_id: str) -> None:
    """Every response carries the request id, as S3's do; streamed ones get it from the
    handler before their headers go out, the rest in _handle."""
    headers = response.headers
    headers["x-amz-request-id"] = request_id
    headers["x-amz-id-2"] = request_id
    headers["Server"] = "eucalypt-walrus"


class WalrusServer:
    def __init__(self, config: WalrusConfig, *, users: UserDirectory | None = None,
                 clock: SystemClock | None = None) -> None:
        self.config = config
        self._users = users
        self.clock = clock or SystemClock()
        self.service: WalrusService | None = None
        self.admin: User | None = None
        self.admin_credentials: Path | None = None
        self.admin_created = False
        self._runner: web.ServerRunner | None = None
        self._sweeper: asyncio.Task | None = None
        self._resolver: asyncio.Task | None = None
        self.port: int | None = None
        # Request ids: unique per server start, cheap (no syscall per request).
        self._request_id_prefix = secrets.token_hex(3).upper()
        self._request_ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def start(self) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        users = self._users
        if users is None:
            if config.users_file is not None:
                users = load_users_file(config.users_file)
            else:
                self.admin, self.admin_credentials, self.admin_created = generated_admin(config.data_dir)
                users = StaticUsers([self.admin])
        engine = await Engine.open(config.data_dir / "store", clock=self.clock,
                                   chunk_size=config.chunk_size, inline_limit=config.inline_limit)
        metrics = WalrusMetrics(engine.stats)
        self.service = WalrusService(engine, users, metrics, config, self.clock)
        # aiohttp's low-level server: Walrus routes every request itself (walrus/s3/router.py),
        # so the application router, middlewares and signals would only add per-request cost.
        server = web.Server(self._handle, access_log=None, max_line_size=PARSER_LINE_LIMIT,
                            max_field_size=PARSER_LINE_LIMIT)
        # The parser's limits sit well above S3's (8 KiB header section, 1 KiB keys) so that
        # our checks answer oversize requests with S3 errors, not aiohttp's plain-text 400.
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, config.host, config.port, backlog=1024, reuse_address=True)
        await site.start()
        sockets = site._server.sockets if site._server else []
        self.port = sockets[0].getsockname()[1] if sockets else config.port
        self._sweeper = asyncio.create_task(self._sweep_uploads())
        if hasattr(users, "system_seed") and not await self._resolve_system_identity():
            self._resolver = asyncio.create_task(self._keep_resolving_system_identity())

    async def _resolve_system_identity(self) -> bool:
        """In a cloud, the identity aws-exec-read grants READ to is the cloud administrator's
        account (whose image cache reads bundles); the directory knows its id."""
        try:
            seed = await self.service.users.system_seed()
        except DirectoryUnavailable as exc:
            log.warning("cannot learn the cloud's identity yet: %s", exc)
            return False
        if seed:
            self.service.system_seed = seed
        return True

    async def _keep_resolving_system_identity(self) -> None:
        while not await self._resolve_system_identity():
            await asyncio.sleep(2.0)

    async def stop(self) -> None:
        if self._resolver is not None:
            self._resolver.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._runner is not None:
            await self._runner.cleanup()
        if self.service is not None:
            await self.service.engine.close()
            close = getattr(self.service.users, "close", None)
            if close is not None:
                await close()

    async def _sweep_uploads(self) -> None:
        """Orphan cleanup: abort multipart uploads nobody finished."""
        while True:
            try:
                cutoff = self.clock.now() - self.config.upload_expiry_seconds
                expired = await self.service.engine.expire_uploads(cutoff)
                if expired:
                    log.info("aborted %d abandoned multipart uploads", expired)
            except Exception:
                log.exception("multipart upload sweep failed")
            await asyncio.sleep(self.config.upload_sweep_interval)

    # ---- request handling -------------------------------------------------------------
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = f"{self._request_id_prefix}{next(self._request_ids):010X}"
        service = self.service
        started = time.monotonic()
        raw_path = request.raw_path.split("?", 1)[0]
        operation = "Unknown"
        ctx = None
        try:
            if raw_path.startswith(OPS_PREFIX):
                operation = "Operations"
                response = await self._operations(request, raw_path)
            else:
                addr = address(request.host, raw_path, self.config.domains)
                query = request.query
                op = route(request.method, addr, query, request.headers)
                operation = op.operation
                handler = OPERATIONS.get(op.operation)
                if handler is None:
                    raise S3Error("NotImplemented", "The requested operation is not implemented.")
                self._check_header_size(request)
                user, verified = await self._authenticate(request, raw_path, addr)
                ctx = Context(request, op, addr, query, user, verified, request_id, service)
                response = await handler(ctx)
        except S3Error as exc:
            response = self._error_response(request, exc, request_id, ctx)
        except CorruptChunk:
            log.exception("corrupt or missing chunk serving %s", request.path)
            response = self._error_response(request, S3Error("InternalError"), request_id, ctx)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            response = self._error_response(request, S3Error("InternalError"), request_id, ctx)
        if not response.prepared:
            stamp_response(response, request_id)
            if request.headers.get("Expect", "").lower() == "100-continue" \
                    and not request.get("continue_sent"):
                # Answered before asking for the body: the client will not send it, so
                # the connection cannot carry another request (its framing is unknown).
                response.force_close()
        metrics = service.metrics
        metrics.requests.labels(operation, str(response.status)).inc()
        metrics.duration.labels(operation).observe(time.monotonic() - started)
        if ctx is not None and ctx.bytes_in:
            metrics.bytes_received.inc(ctx.bytes_in)
        return response

    def _check_header_size(self, request: web.BaseRequest) -> None:
        size = sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
        if size > MAX_HEADER_SECTION:
            raise S3Error("RequestHeaderSectionTooLarge", MaxSizeAllowed=str(MAX_HEADER_SECTION))

    async def _authenticate(self, request: web.BaseRequest, raw_path: str, addr):
        http_request = HttpRequest(request.method, raw_path, request.rel_url.raw_query_string,
                                   request.headers)
        try:
            auth = parse(http_request, service="s3", sigv2_resource=addr.sigv2_resource)
            if auth is None:
                return None, None
            try:
                user = await self.service.users.by_access_key(auth.access_key)
            except DirectoryUnavailable as exc:
                log.warning("user directory unavailable: %s", exc)
                raise S3Error("ServiceUnavailable", "The user directory cannot be reached; retry later.",
                              status=503) from exc
            if user is None:
                raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=auth.access_key)
            verified = self._verify(auth, http_request, user.secret_key, addr)
        except AuthError as exc:
            raise S3Error(exc.code, exc.message, status=exc.status) from exc
        return user, verified

    def _verify(self, auth, http_request, secret: str, addr):
        now = self.clock.utcnow()
        try:
            return verify(auth, http_request, secret, now=now)
        except SignatureDoesNotMatch:
            # SigV2 clients disagree on a bucket's canonical resource: botocore signs
            # "/bucket/" (what AWS canonicalises to), others sign the path as sent.
            if auth.scheme not in (Scheme.V2_HEADER, Scheme.V2_QUERY) or addr.bucket is None \
                    or addr.key is not None:
                raise
            resource = addr.sigv2_resource
            other = resource.rstrip("/") if resource.endswith("/") else resource + "/"
            retry = parse(http_request, service="s3", sigv2_resource=other)
            return verify(retry, http_request, secret, now=now)

    def _error_response(self, request: web.BaseRequest, exc: S3Error, request_id: str, ctx) -> web.Response:
        headers = {}
        if exc.status == 304 or request.method == "HEAD":
            return web.Response(status=exc.status, headers=headers)
        resource = ctx.resource if ctx is not None else request.path
        body = error_document(exc.code, exc.message, resource, request_id, exc.fields)
        if exc.code == "InvalidRange" and "ActualObjectSize" in exc.fields:
            headers["Content-Range"] = f"bytes */{exc.fields['ActualObjectSize']}"
        return web.Response(status=exc.status, body=body, headers=headers, content_type="application/xml")

    async def _operations(self, request: web.BaseRequest, path: str) -> web.Response:
        what = path[len(OPS_PREFIX):]
        if what == "health" and request.method in ("GET", "HEAD"):
            body = json.dumps({"status": "ok", "service": "walrus", "pid": os.getpid()})
            return web.Response(text=body, content_type="application/json")
        if what == "metrics" and request.method == "GET":
            return web.Response(body=self.service.metrics.render(),
                                headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
        raise S3Error("NotImplemented", "Unknown operations endpoint")
