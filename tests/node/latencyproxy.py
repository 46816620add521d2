"""A test-only HTTP proxy that adds latency to every request (in-process or as a process
of its own: `python latencyproxy.py UPSTREAM SECONDS` prints its URL)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import ClientSession, web


class LatencyProxy:
    """A test-only HTTP proxy in front of Walrus: every request waits `latency` seconds
    first. The Host header is passed through unchanged, so SigV4 signatures made for
    the proxy's address still verify at Walrus."""

    def __init__(self, upstream: str, latency: float) -> None:
        self.upstream, self.latency = upstream.rstrip("/"), latency
        self.requests = 0
        self._runner = None
        self._session = None
        self.url = ""

    async def start(self) -> "LatencyProxy":
        self._session = ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        await asyncio.sleep(self.latency)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
        try:
            async with self._session.request(request.method, self.upstream + request.path_qs, data=body,
                                             headers=headers, skip_auto_headers=("User-Agent",)) as up:
                data = await up.read()
                out = {k: v for k, v in up.headers.items()
                       if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
                return web.Response(status=up.status, body=data, headers=out)
        except Exception as exc:  # upstream down: what a load balancer in front would say
            return web.Response(status=502, text=f"upstream unreachable: {exc!r}")

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()


class ProxyProcess:
    """LatencyProxy in a process of its own, so its work does not share the node's event
    loop (what a timing comparison needs)."""

    def __init__(self, upstream: str, latency: float) -> None:
        import subprocess
        self.process = subprocess.Popen([sys.executable, __file__, upstream, str(latency)],
                                        stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent)
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("http://"):
            self.process.kill()
            raise RuntimeError(f"latency proxy did not start: {line!r}")
        self.url = line

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def _serve_proxy(upstream: str, latency: float) -> None:
    proxy = await LatencyProxy(upstream, latency).start()
    print(proxy.url, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve_proxy(sys.argv[1], float(sys.argv[2])))
