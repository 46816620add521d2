"""The load tools: wrk (small objects, listing) and curl (large bodies), plus untimed helpers.

Nothing here signs a request: every URL was made up front (see servers.py), so the same
native tools drive every target and are not the bottleneck on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from servers import BENCH, WORK

DATA = WORK / "data"
MiB = 1 << 20


class LoadError(RuntimeError):
    pass


# -- data files ----------------------------------------------------------------------
def data_file(name: str, size: int) -> Path:
    """A file of random bytes, made once and kept in bench/.work/data (reused if the size fits)."""
    DATA.mkdir(parents=True, exist_ok=True)
    p = DATA / name
    if p.exists() and p.stat().st_size == size:
        return p
    tmp = p.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n
    tmp.rename(p)
    return p


# -- curl ----------------------------------------------------------------------------
CURL_FMT = "%{http_code} %{size_download} %{size_upload} %{time_total} %header{etag}\n"


def _curl(args: list[str], timeout: float) -> dict:
    cmd = ["curl", "-s", "-S", "-o", "/dev/null", "--noproxy", "*", "-H", "Expect:",
           "-w", CURL_FMT, *args]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LoadError(f"curl timed out after {timeout:.0f}s: {args[-1][:80]}")
    parts = r.stdout.strip().split(" ", 4)
    if r.returncode != 0 or len(parts) < 4:
        raise LoadError(f"curl rc={r.returncode} {r.stderr.strip()[:200]} {r.stdout[:200]}")
    code, down, up, t = int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3])
    if not 200 <= code < 300:
        raise LoadError(f"HTTP {code} for {args[-1][:120]}")
    return {"code": code, "down": down, "up": up, "time": t,
            "etag": parts[4].strip() if len(parts) > 4 else ""}


def curl_get(base: str, path: str, expect: int, timeout: float = 900) -> dict:
    r = _curl([base + path], timeout)
    if r["down"] != expect:
        raise LoadError(f"GET returned {r['down']} bytes, expected {expect}")
    return r


def curl_put(base: str, path: str, file: Path, timeout: float = 900) -> dict:
    r = _curl(["-T", str(file), base + path], timeout)
    if r["up"] != file.stat().st_size:
        raise LoadError(f"PUT sent {r['up']} bytes, expected {file.stat().st_size}")
    return r


def parallel(jobs: list, width: int) -> tuple[float, list]:
    """Run callables `width` at a time; return (wall seconds, results in order)."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=width) as ex:
        futs = [ex.submit(j) for j in jobs]
        res = [f.result() for f in futs]
    return time.perf_counter() - t0, res


# -- wrk -----------------------------------------------------------------------------
def wrk(base: str, method: str, paths: list[str], *, connections: int, seconds: float,
        threads: int = 1, body: Path | None = None, timeout_s: int = 30) -> dict:
    """Drive `paths` in rotation with wrk for `seconds`; returns its summary."""
    with tempfile.NamedTemporaryFile("w", dir=WORK, prefix="paths-", suffix=".txt",
                                     delete=False) as f:
        f.write("\n".join(paths) + "\n")
        plist = f.name
    try:
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
               f"--timeout={timeout_s}s", "-s", str(BENCH / "rotate.lua"), base,
               "--", method, plist, str(body) if body else ""]
        r = subprocess.run(cmd, capture_output=True, text=True,
                           timeout=seconds + timeout_s + 60)
    finally:
        os.unlink(plist)
    line = next((l for l in r.stdout.splitlines() if l.startswith("WRK_JSON ")), None)
    if r.returncode != 0 or line is None:
        raise LoadError(f"wrk rc={r.returncode}: {r.stderr.strip()[:300]} {r.stdout[-300:]}")
    s = json.loads(line[len("WRK_JSON "):])
    s["seconds"] = s["duration_us"] / 1e6
    s["errors"] = sum(s[k] for k in ("err_connect", "err_read", "err_write", "err_status",
                                      "err_timeout"))
    s["rps"] = s["requests"] / s["seconds"] if s["seconds"] else 0.0
    return s


# -- untimed population (asyncio + aiohttp over presigned URLs) ----------------------
def populate(base: str, items: list[tuple[str, bytes]], concurrency: int = 16,
             timeout: float = 600) -> None:
    """PUT each (path, body) once; raises on any non-2xx. Not timed."""
    import aiohttp
    from yarl import URL

    async def main():
        sem = asyncio.Semaphore(concurrency)
        conn = aiohttp.TCPConnector(limit=concurrency)
        failures = []
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120),
                                         skip_auto_headers=("Content-Type",)) as s:
            async def one(path, body):
                async with sem:
                    async with s.put(URL(base + path, encoded=True), data=body) as r:
                        await r.read()
                        if not 200 <= r.status < 300:
                            failures.append((r.status, path[:80]))
            await asyncio.gather(*(one(p, b) for p, b in items))
        if failures:
            raise LoadError(f"{len(failures)} PUTs failed during population, first: {failures[0]}")

    asyncio.run(asyncio.wait_for(main(), timeout))


def fetch(base: str, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(base + path, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
