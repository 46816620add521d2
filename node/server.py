"""The node agent's HTTP API (aiohttp). Every /node/v1/ call is signed (auth.py).

NodeServer also runs what hangs off the agent: the instance metadata service on its own
address and port (metadata.py), the network's NAT table pointing at it (network.py), and
the heartbeat to control (registration.py). Start order: agent (with bridge + DHCP),
metadata service, NAT, agent API, heartbeat (the url it reports must already answer);
stop runs it backwards.

    GET    /_eucalypt/health                   {"status": "ok", "metadata_url", "registration"}
                                               (unsigned)
    GET    /_eucalypt/metrics                  Prometheus text                (unsigned)
    GET    /node/v1/resources                  cores / memory / disk / cache totals and use
    GET    /node/v1/images                     {"images": [cached image, ...]}
    POST   /node/v1/images/{image_id}/prefetch fetch + assemble now; the cached image
    GET    /node/v1/instances                  {"instances": [...]}
    POST   /node/v1/instances                  launch (body: LaunchRequest JSON); answers when
                                               the domain runs (200) or the launch failed (error)
    GET    /node/v1/instances/{id}
    DELETE /node/v1/instances/{id}             terminate
    POST   /node/v1/instances/{id}/reboot
    GET    /node/v1/instances/{id}/console     {"output": base64 of the console log's tail}
    PUT    /node/v1/network-policy             security groups + elastic IPs (firewall.py):
                                               {"version", "enforced"}; 400 malformed, 409 older
                                               than the version applied

Errors: {"error": {"code", "message"}} with the status of the NodeError (errors.py).
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from .agent import NodeAgent
from .auth import check_request
from .config import NodeConfig
from .errors import BadRequest, NodeError, Unauthorized
from .instances import LaunchRequest, _IMAGE_ID
from .metadata import MetadataServer
from .registration import Registration

log = logging.getLogger("eucalypt.node.server")
MAX_BODY = 1 << 20


class NodeServer:
    def __init__(self, config: NodeConfig, **agent_options) -> None:
        self.config = config
        self.agent = NodeAgent(config, **agent_options)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.metadata: MetadataServer | None = None
        self.registration: Registration | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def metrics(self):
        return self.agent.metrics

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/_eucalypt/health", self.health)
        r.add_get("/_eucalypt/metrics", self.metrics_text)
        r.add_get("/node/v1/resources", self.resources)
        r.add_get("/node/v1/images", self.images)
        r.add_post("/node/v1/images/{image_id}/prefetch", self.prefetch)
        r.add_get("/node/v1/instances", self.list_instances)
        r.add_post("/node/v1/instances", self.run_instance)
        r.add_get("/node/v1/instances/{instance_id}", self.describe_instance)
        r.add_delete("/node/v1/instances/{instance_id}", self.terminate)
        r.add_post("/node/v1/instances/{instance_id}/reboot", self.reboot)
        r.add_get("/node/v1/instances/{instance_id}/console", self.console)
        r.add_put("/node/v1/network-policy", self.network_policy)
        return app

    async def start(self) -> "NodeServer":
        c = self.config
        await self.agent.start()
        try:
            self.metadata = await MetadataServer(self.agent.metadata_record, c.metadata_bind_host,
                                                 c.metadata_port, metrics=self.agent.metrics).start()
            await self.agent.firewall.install(self.metadata.port)  # NAT + the stored policy
            self._runner = web.AppRunner(self.app(), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, c.host, c.port)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            if c.control_url:
                if c.host in ("0.0.0.0", "::", "") and not c.advertise_url:
                    log.warning("listening on %r without --advertise-url: control is told %s, which it "
                                "cannot reach", c.host, self.url)
                self.registration = await Registration(self.agent, c.control_url, c.advertise_url or self.url,
                                                       interval=c.heartbeat_interval).start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        if self.registration is not None:
            await self.registration.stop()
            self.registration = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.metadata is not None:
            await self.metadata.stop()
            self.metadata = None
        await self.agent.close()

    # middleware ------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unknown"
        try:
            if request.path.startswith("/node/"):
                body = await request.read()
                why = check_request(self.config.service_secret, request.method, request.raw_path,
                                    request.headers, body, self.agent.clock.now())
                if why:
                    raise Unauthorized(why)
            response = await handler(request)
        except NodeError as exc:
            response = web.json_response(exc.to_json(), status=exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = web.json_response({"error": {"code": exc.reason.replace(" ", ""), "message": exc.reason}},
                                         status=exc.status)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: say so, keep serving
            log.exception("%s %s failed", request.method, request.path)
            response = web.json_response({"error": {"code": "InternalError", "message": repr(exc)}}, status=500)
        self.agent.metrics.api_requests.labels(route, str(response.status)).inc()
        return response

    # handlers --------------------------------------------------------------------------

    async def health(self, request):
        return web.json_response({
            "status": "ok", "instances": len(self.agent.instances.all()),
            "cached_images": len(self.agent.cache.db.images()),
            "metadata_url": self.metadata.url if self.metadata else None,
            "network": self.agent.network.describe() if self.agent.network else None,
            "policy_version": self.agent.firewall.version,
            "registration": self.registration.status() if self.registration else None})

    async def metrics_text(self, request):
        self.agent.cache.refresh_gauges()
        self.agent.instances.refresh_gauges()
        return web.Response(body=self.agent.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def resources(self, request):
        return web.json_response(self.agent.resources())

    async def images(self, request):
        return web.json_response({"images": self.agent.describe_images()})

    async def prefetch(self, request):
        image_id = request.match_info["image_id"]
        if not _IMAGE_ID.match(image_id):
            raise BadRequest(f"image id {image_id!r} is malformed")
        result = await self.agent.cache.ensure(image_id)
        image = next(i for i in self.agent.describe_images() if i["image_id"] == image_id)
        return web.json_response({"image": image, "fetched_bytes": result.fetched_bytes,
                                  "fetch_seconds": result.fetch_seconds,
                                  "assemble_seconds": result.assemble_seconds})

    async def list_instances(self, request):
        return web.json_response({"instances": await self.agent.instances.describe_all()})

    async def run_instance(self, request):
        try:
            doc = json.loads(await request.read() or b"null")
        except ValueError as exc:
            raise BadRequest(f"the body is not JSON: {exc}") from None
        req = LaunchRequest.from_json(doc)
        await self.agent.instances.run(req)
        return web.json_response({"instance": await self.agent.instances.describe(req.instance_id)})

    async def describe_instance(self, request):
        return web.json_response({"instance": await self.agent.instances.describe(request.match_info["instance_id"])})

    async def terminate(self, request):
        record = await self.agent.instances.terminate(request.match_info["instance_id"])
        return web.json_response({"instance": {"instance_id": record.instance_id, "state": record.state}})

    async def reboot(self, request):
        record = await self.agent.instances.reboot(request.match_info["instance_id"])
        return web.json_response({"instance": {"instance_id": record.instance_id, "state": record.state}})

    async def network_policy(self, request):
        try:
            doc = json.loads(await request.read() or b"null")
        except ValueError as exc:
            raise BadRequest(f"the body is not JSON: {exc}") from None
        return web.json_response(await self.agent.firewall.set_policy(doc))

    async def console(self, request):
        return web.json_response(self.agent.instances.console_output(request.match_info["instance_id"]))
