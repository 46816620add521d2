"""Test support for the web console: a cookie-keeping aiohttp client that reads each
page's CSRF token, and the steps every console test takes (request, approve, log in).

A module of its own (not conftest.py) so the console tests import it by one name.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from controltest import ROOT

ADMIN_PASSWORD = "Cloud-keeper-pass-1"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_REQUEST_ID = re.compile(r"req-[0-9a-f]{16}")


def set_console_password(control_dir: Path, account: str, user: str, password: str) -> subprocess.CompletedProcess:
    """`eucalypt admin user password USER --account ACCOUNT`, the password on stdin."""
    return subprocess.run([sys.executable, "-m", "eucalypt.cli", "admin", "--data-dir", str(control_dir), "user",
                           "password", user, "--account", account], input=password + "\n", cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@dataclass
class Page:
    status: int
    url: str
    text: str
    headers: dict = field(default_factory=dict)
    body: bytes = b""


class ConsoleClient:
    """One browser's worth of state: cookies and the last page's CSRF token."""

    def __init__(self, base_url: str, *, source_address: str | None = None) -> None:
        self.base = base_url.rstrip("/") + "/console/"
        connector = aiohttp.TCPConnector(local_addr=(source_address, 0)) if source_address else None
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), connector=connector)
        self.csrf: str | None = None

    async def close(self) -> None:
        await self.http.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def _page(self, response: aiohttp.ClientResponse) -> Page:
        body = await response.read()
        text = body.decode("utf-8", "replace") if response.content_type.startswith("text/") else ""
        if found := _CSRF.search(text):
            self.csrf = found.group(1)
        return Page(response.status, str(response.url), text, dict(response.headers), body)

    async def get(self, path: str, **kw) -> Page:
        async with self.http.get(self.base + path, **kw) as response:
            return await self._page(response)

    async def post(self, path: str, data: dict | None = None, *, csrf: bool = True, **kw) -> Page:
        form = dict(data or {})
        if csrf:
            if self.csrf is None:
                await self.get("login")
            form.setdefault("csrf", self.csrf)
        async with self.http.post(self.base + path, data=form, **kw) as response:
            return await self._page(response)

    # ---- the usual steps ----------------------------------------------------------------
    async def request_account(self, account: str, user: str, password: str, email: str | None = None) -> Page:
        await self.get("request")
        return await self.post("request", {"account": account, "user": user, "email": email or f"{user}@example.com",
                                           "password": password, "password2": password})

    async def login(self, account: str, user: str, password: str) -> Page:
        await self.get("login")
        return await self.post("login", {"account": account, "user": user, "password": password})


def request_id_in(text: str) -> str:
    found = _REQUEST_ID.search(text)
    assert found, text
    return found.group(0)


async def approved_user(cloud_url: str, admin: ConsoleClient, account: str, user: str, password: str) -> None:
    """Request ACCOUNT/USER as a visitor and approve it as the (logged-in) admin."""
    async with ConsoleClient(cloud_url) as visitor:
        page = await visitor.request_account(account, user, password)
        assert page.status == 200 and "Pending" in page.text, page.text
        request_id = request_id_in(page.text)
    await admin.get("admin/requests")
    page = await admin.post(f"admin/requests/{request_id}/approve")
    assert page.status == 200 and "was approved" in page.text, page.text


def unpack_credentials(zip_bytes: bytes, into: Path) -> Path:
    """Unpack the credentials zip (keeping file modes) and return its folder."""
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        names = archive.namelist()
        for info in archive.infolist():
            target = into / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
            os.chmod(target, (info.external_attr >> 16) & 0o777)
    folders = {n.split("/", 1)[0] for n in names}
    assert len(folders) == 1, names
    return into / folders.pop()


def eucarc_environment(folder: Path, home: Path) -> dict[str, str]:
    """What `source eucarc` gives, through bash itself (not our own parsing)."""
    script = f'cd / && source "{folder}/eucarc" && env -0'
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EC2_", "EUCA"))}
    env["HOME"] = str(home)
    done = subprocess.run(["bash", "-c", script], capture_output=True, env=env, timeout=30, check=True)
    out = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    out["PATH"] = f"{Path(sys.executable).parent}:{out.get('PATH', '')}"
    return out


def start_test_node(root: Path, cloud, name: str, *, cores: int = 8, memory_mib: int = 4096):
    """A real `eucalypt node` on libvirt's test driver, heartbeating to the cloud's control
    (as tests/control does); returns once it reports itself registered."""
    import json
    import time
    import urllib.request

    from controltest import admin
    from walrustest import start_service

    admin(cloud.control_dir, "credentials", "admin", "--account", "eucalyptus", "--out", str(root / "admin-creds"))
    text = (root / "admin-creds" / "eucarc").read_text()
    values = dict(re.findall(r"^export (AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY)=['\"]?([^'\"\n]*)", text, re.M))
    creds = root / "walrus-creds.toml"
    creds.write_text(f'access_key = "{values["AWS_ACCESS_KEY_ID"]}"\nsecret_key = "{values["AWS_SECRET_ACCESS_KEY"]}"\n')
    node = start_service("node", root / name, [
        "--control", cloud.control.url, "--hypervisor", "test:///default", "--walrus", cloud.walrus.url,
        "--service-secret-file", str(cloud.control_dir / "service.secret"), "--walrus-credentials", str(creds),
        "--cores", str(cores), "--memory-mib", str(memory_mib), "--metadata-port", "0",
        "--subnet", "10.213.0.0/24"])
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(node.url.rstrip("/") + "/_eucalypt/health", timeout=5) as reply:
            if (json.load(reply).get("registration") or {}).get("registered"):
                return node
        if time.monotonic() > deadline:
            node.stop()
            raise AssertionError(f"node did not register:\n{node.log_path.read_text()[-3000:]}")
        time.sleep(0.2)
