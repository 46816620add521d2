"""Clients of control for other services: ``ControlUserDirectory`` for Walrus.

    users = ControlUserDirectory("http://127.0.0.1:8773/", service_secret)
    user = await users.by_access_key("AKIA...")     # walrus.users.User or None
    await users.close()

Answers are cached for ``ttl`` seconds (positive and negative alike), so a disabled user's
or deleted key's requests stop being accepted within ``ttl``. A control that cannot be
reached raises ``ControlUnavailable`` (never a silent None: "no such user" and "cannot
tell" are different answers).
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from eucalypt.clock import SystemClock
from walrus.users import DirectoryUnavailable, User

from . import internal
from .datadir import SERVICE_SECRET_FILE
from .identity import ADMIN_ACCOUNT


class ControlUnavailable(DirectoryUnavailable):
    """Control did not answer a lookup (down, unreachable, or it refused our secret)."""


def read_service_secret(data_dir: Path) -> str:
    return (Path(data_dir) / SERVICE_SECRET_FILE).read_text().strip()


class ControlUserDirectory:
    """walrus.users.UserDirectory backed by control's internal lookup endpoint."""

    def __init__(self, control_url: str, service_secret: str, *, ttl: float = 2.0,
                 clock: SystemClock | None = None, timeout: float = 5.0) -> None:
        self._url = control_url.rstrip("/") + internal.LOOKUP_PATH
        self._secret = service_secret
        self._ttl = ttl
        self._clock = clock or SystemClock()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[tuple[str, str], tuple[float, User | None]] = {}
        self.requests = 0  # lookups that went to control (the rest came from the cache)

    async def by_access_key(self, access_key: str) -> User | None:
        user = await self._lookup("access_key", access_key)
        return user if user is not None and user.enabled else None

    async def by_canonical_id(self, canonical_id: str) -> User | None:
        return await self._lookup("canonical_id", canonical_id)

    async def by_email(self, email: str) -> User | None:
        return await self._lookup("email", email.lower())

    async def system_seed(self) -> str | None:
        """The canonical-id seed of the cloud's own identity (the administrator's account,
        whose image cache reads bundles): what aws-exec-read grants READ to."""
        user = await self._lookup("account_name", ADMIN_ACCOUNT)
        return user.name if user is not None else None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _lookup(self, field: str, value: str) -> User | None:
        now = self._clock.now()
        cached = self._cache.get((field, value))
        if cached is not None and cached[0] > now:
            return cached[1]
        user = await self._fetch(field, value)
        self._cache[(field, value)] = (self._clock.now() + self._ttl, user)
        if len(self._cache) > 10_000:  # bound memory: drop what has expired
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        return user

    async def _fetch(self, field: str, value: str) -> User | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        body = json.dumps({field: value}).encode()
        headers = internal.signed_headers(self._secret, internal.LOOKUP_PATH, body, self._clock.now())
        self.requests += 1
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                answer = await response.json(content_type=None)
                if response.status != 200:
                    raise ControlUnavailable(f"control refused the lookup ({response.status}): "
                                             f"{answer.get('error')}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ControlUnavailable(f"control at {self._url} did not answer: {exc}") from exc
        found = answer.get("user")
        if not found:
            return None
        return User(name=found["name"], access_key=found["access_key"], secret_key=found["secret_key"],
                    display_name=found["display_name"], email=found.get("email", ""),
                    enabled=bool(found["enabled"]))
