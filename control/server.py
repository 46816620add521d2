"""The control server: the EC2 Query API (and the internal user lookup) over aiohttp.

    server = ControlServer(ControlConfig(data_dir=path, port=0))
    await server.start()      # server.url is now http://127.0.0.1:<port>/
    ...
    await server.stop()

Each EC2 request: parameters from the query and the form body, then authentication
(eucalypt.auth: SigV4 for service ec2 in any region, or SigV2), then the action's handler
from api/dispatch.py. Every answer carries a requestId; every failure is the EC2 error
envelope with its code and status.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from aiohttp import web

from eucalypt.auth import AuthError, HttpRequest, parse, verify
from eucalypt.clock import SystemClock
from imagecache.cache import CacheConfig

from . import internal, nodes
from .api.context import Context
from .api.dispatch import handler_for
from .api.params import Params
from .api.xml import error_document, response_document
from .console import PREFIX as CONSOLE_PREFIX
from .console import Console
from .datadir import DataDir, open_data_dir
from .errors import Ec2Error
from .identity import account_for_canonical_id, identity_for_key, list_accounts
from .launcher import Launcher
from .policy_push import PolicyPusher
from .imaging import ImagePreparer
from .metrics import ControlMetrics
from .netmodes import NetworkPlan

log = logging.getLogger("eucalypt.control")

OPS_PREFIX = "/_eucalypt/"
EC2_PATHS = frozenset({"/", "/services/compute", "/services/compute/", "/services/Eucalyptus",
                       "/services/Eucalyptus/"})
MAX_BODY = 1024 * 1024


@dataclass(frozen=True, slots=True)
class InstanceType:
    cpus: int
    memory_mib: int
    disk_gb: int


# Eucalyptus 4's stock types, plus the small current-generation ones scripts expect.
DEFAULT_INSTANCE_TYPES = {
    "t1.micro": InstanceType(1, 256, 5),
    "t2.micro": InstanceType(1, 1024, 10),
    "t2.small": InstanceType(1, 2048, 10),
    "m1.small": InstanceType(1, 256, 5),
    "c1.medium": InstanceType(2, 512, 10),
    "m1.large": InstanceType(2, 512, 10),
    "m1.xlarge": InstanceType(2, 1024, 10),
    "c1.xlarge": InstanceType(2, 2048, 10),
}


@dataclass
class ControlConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8773
    walrus_url: str | None = None
    region: str = "eucalyptus"
    zones: tuple[str, ...] = ()  # clusters; empty: one zone named REGION + "a"
    instance_types: dict[str, InstanceType] = field(default_factory=lambda: dict(DEFAULT_INSTANCE_TYPES))
    public_url: str | None = None  # the EC2 URL to advertise, if not http://HOST:PORT/
    public_ips: tuple[str, ...] = ()  # the elastic IP pool: "A.B.C.D-A.B.C.E" ranges or CIDRs
    heartbeat_interval: float = 5.0  # told to nodes; a node is unreachable after 3 missed
    terminated_retention: float = 3600.0  # terminated instances stay visible this long
    launch_timeout: float = 300.0  # a launch fails once its node was unreachable this long
    image_cache_bytes: int | None = None  # cap of the decrypted image cache in Walrus (None: no cap)
    image_prepare_concurrency: int = 1    # bundles prepared at once (each uses ~3 cores' worth of threads)
    network: NetworkPlan | None = None    # the network mode and its address plan (None: flat)
    auto_public_ips: bool = False         # every instance gets a pool address at launch (EC2-Classic)

    def __post_init__(self) -> None:
        if not self.zones:
            self.zones = (f"{self.region}a",)
        if self.network is None:
            self.network = NetworkPlan.build("flat", self.zones)


@dataclass
class ControlService:
    """What handlers may use."""

    data: DataDir
    config: ControlConfig
    metrics: ControlMetrics
    clock: SystemClock
    public_url: str = ""
    launcher: "Launcher | None" = None  # node calls in the background (launcher.py)
    policy: "PolicyPusher | None" = None  # network policies to the nodes (policy_push.py)
    walrus_url: str = ""
    images: ImagePreparer | None = None

    @property
    def store(self):
        return self.data.store

    @property
    def ca(self):
        return self.data.ca


class ControlServer:
    def __init__(self, config: ControlConfig, *, clock: SystemClock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.service: ControlService | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}/"

    async def start(self) -> None:
        data = open_data_dir(self.config.data_dir, now=self.clock.now())
        self.service = ControlService(data, self.config, ControlMetrics(), self.clock)
        app = web.Application(client_max_size=MAX_BODY)
        # The web console first (its own sub-application under /console/), then the rest:
        # EC2 at the EC2 paths, the operational endpoints under /_eucalypt/.
        app.router.add_get(CONSOLE_PREFIX.rstrip("/"), _to_console)
        app.add_subapp(CONSOLE_PREFIX, Console(self.service).build_app())
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, backlog=1024, reuse_address=True)
        await site.start()
        sockets = site._server.sockets if site._server else []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        self.service.public_url = self.config.public_url or self.url
        self.service.launcher = Launcher(self.service)
        await self.service.launcher.start()
        self.service.policy = PolicyPusher(data.store, data.service_secret, self.clock,
                                           interval=self.config.heartbeat_interval, network=self.config.network,
                                           region=self.config.region)
        await self.service.policy.start()
        self.service.walrus_url = self.config.walrus_url or data.endpoints()["s3_url"]
        data.announce(self.service.public_url, self.service.walrus_url, self.config.region)
        self.service.images = ImagePreparer(
            data.store, data.ca.key, self.service.walrus_url,
            cache_config=CacheConfig(cap_bytes=self.config.image_cache_bytes),
            concurrency=self.config.image_prepare_concurrency)
        await self.service.images.start()

    async def stop(self) -> None:
        if self.service is not None and self.service.policy is not None:
            await self.service.policy.stop()
        if self.service is not None and self.service.launcher is not None:
            await self.service.launcher.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.service is not None:
            if self.service.images is not None:
                await self.service.images.stop()
            self.service.data.close()

    # ---- request handling ------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0]
        if raw_path.startswith(OPS_PREFIX):
            return await self._operations(request, raw_path[len(OPS_PREFIX):])
        request_id = str(uuid.uuid4())
        started = time.monotonic()
        metrics = self.service.metrics
        action_label = "Unknown"
        try:
            if raw_path not in EC2_PATHS:
                raise Ec2Error("InvalidAction", f"There is no EC2 endpoint at {request.path}; use / or "
                                                "/services/compute/", status=404)
            body = await request.read()
            params, form = self._params(request, body)
            action = params.get("Action")
            if not action:
                raise Ec2Error("MissingAction", "The request must contain the parameter Action")
            identity = self._authenticate(request, raw_path, body, form)
            handler = handler_for(action)
            if handler is None:
                raise Ec2Error("InvalidAction", f"The action {action} is not valid for this web service.")
            action_label = action
            ctx = Context(action, params, identity, request_id, self.service)
            result = await handler(ctx)
            response = web.Response(body=response_document(action, params.get("Version"), request_id, result),
                                    content_type="text/xml", charset="UTF-8")
        except Ec2Error as exc:
            response = self._error(exc, request_id)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            response = self._error(Ec2Error("InternalError", "We encountered an internal error. "
                                                             "Please try again."), request_id)
        metrics.requests.labels(action_label, str(response.status)).inc()
        metrics.duration.labels(action_label).observe(time.monotonic() - started)
        return response

    def _error(self, exc: Ec2Error, request_id: str) -> web.Response:
        self.service.metrics.errors.labels(exc.code).inc()
        return web.Response(status=exc.status, body=error_document(exc.code, exc.message, request_id),
                            content_type="text/xml", charset="UTF-8")

    @staticmethod
    def _params(request: web.Request, body: bytes) -> tuple[Params, bytes | None]:
        values = dict(parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True))
        form = None
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            form = body
            try:
                values.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
            except UnicodeDecodeError:
                raise Ec2Error("InvalidParameterValue", "The request body is not UTF-8") from None
        elif request.method not in ("GET", "POST"):
            raise Ec2Error("InvalidAction", f"The EC2 API does not answer {request.method}")
        return Params(values), form

    def _authenticate(self, request: web.Request, raw_path: str, body: bytes, form: bytes | None):
        http_request = HttpRequest(request.method, raw_path, request.rel_url.raw_query_string, request.headers)
        try:
            auth = parse(http_request, service="ec2", form=form)
            if auth is None:
                raise Ec2Error("MissingAuthenticationToken",
                               "The request must contain either a valid (registered) AWS access key ID "
                               "or X.509 certificate.")
            with self.service.store.read() as txn:
                identity = identity_for_key(txn, auth.access_key)
            if identity is None or not identity.usable:
                raise Ec2Error("AuthFailure", "AWS was not able to validate the provided access credentials")
            verify(auth, http_request, identity.key.secret_key, now=self.clock.utcnow(),
                   body_sha256=hashlib.sha256(body).hexdigest())
        except AuthError as exc:
            code, status = exc.code_for("ec2")
            message = exc.message
            if code == "RequestExpired":
                message = (f"{message} Request has expired or is signed too far from the server's time "
                           f"(now {self.clock.utcnow():%Y-%m-%dT%H:%M:%SZ}; at most 15 minutes of skew).")
            raise Ec2Error(code, message, status=status) from exc
        return identity

    # ---- operational endpoints -------------------------------------------------------
    async def _operations(self, request: web.Request, what: str) -> web.Response:
        if what == "health" and request.method in ("GET", "HEAD"):
            with self.service.store.read() as txn:
                txn.get("meta", b"schema")
            body = json.dumps({"status": "ok", "service": "control", "pid": os.getpid()})
            return web.Response(text=body, content_type="application/json")
        if what == "metrics" and request.method == "GET":
            return web.Response(body=self.service.metrics.render(),
                                headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
        if OPS_PREFIX + what == internal.LOOKUP_PATH and request.method == "POST":
            return await self._user_lookup(request)
        if OPS_PREFIX + what == nodes.HEARTBEAT_PATH and request.method == "POST":
            return await nodes.handle_heartbeat(self.service, request)
        return web.json_response({"error": "no such operations endpoint"}, status=404)

    async def _user_lookup(self, request: web.Request) -> web.Response:
        body = await request.read()
        metrics = self.service.metrics
        why = internal.check(self.service.data.service_secret, "POST", internal.LOOKUP_PATH, request.headers,
                             body, self.clock.now())
        if why is not None:
            metrics.user_lookups.labels("unauthorized").inc()
            return web.json_response({"error": why}, status=401)
        try:
            query = json.loads(body)
            if not isinstance(query, dict) or len(query) != 1:
                raise ValueError
        except ValueError:
            return web.json_response({"error": "body must be one of {access_key|canonical_id|email|account_name: "
                                               "...}"},
                                     status=400)
        with self.service.store.read() as txn:
            user = _lookup(txn, query)
        metrics.user_lookups.labels("found" if user else "absent").inc()
        return web.json_response({"user": user})


async def _to_console(request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently(CONSOLE_PREFIX)


def _lookup(txn, query: dict) -> dict | None:
    if "access_key" in query:
        identity = identity_for_key(txn, str(query["access_key"]))
        if identity is None:
            return None
        account = identity.account
        return {"name": account.canonical_seed, "display_name": account.name, "email": account.email,
                "access_key": identity.key.access_key, "secret_key": identity.key.secret_key,
                "enabled": identity.usable, "account_id": account.id, "account_name": account.name,
                "user_name": identity.user.name}
    if "canonical_id" in query:
        account = account_for_canonical_id(txn, str(query["canonical_id"]))
    elif "account_name" in query:
        account = next((a for a in list_accounts(txn) if a.name == str(query["account_name"])), None)
    elif "email" in query:
        wanted = str(query["email"]).lower()
        account = next((a for a in list_accounts(txn) if a.email and a.email.lower() == wanted), None)
    else:
        return None
    if account is None:
        return None
    return {"name": account.canonical_seed, "display_name": account.name, "email": account.email,
            "access_key": "", "secret_key": "", "enabled": account.enabled, "account_id": account.id,
            "account_name": account.name, "user_name": ""}

