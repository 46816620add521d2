"""Who may call Walrus: the user lookup behind one small interface.

Standalone Walrus reads users from a TOML file or generates an admin on first start; when
it runs inside a cloud, control becomes the source of accounts — a second implementation
of `UserDirectory`, nothing else changes.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class User:
    name: str
    access_key: str
    secret_key: str
    display_name: str
    email: str = ""
    enabled: bool = True

    @property
    def canonical_id(self) -> str:
        """S3's 64-hex canonical user id, stable for a user name."""
        return canonical_id_for(self.name)


@functools.lru_cache(maxsize=65536)
def canonical_id_for(name: str) -> str:
    return hashlib.sha256(f"eucalypt-user:{name}".encode()).hexdigest()


class DirectoryUnavailable(RuntimeError):
    """The directory cannot answer now (e.g. control is unreachable): not "no such user"."""


class UserDirectory(Protocol):
    """Read-only lookups. None means "no such (enabled) user"; lookups never raise for that,
    and raise DirectoryUnavailable when they cannot tell."""

    async def by_access_key(self, access_key: str) -> User | None: ...

    async def by_canonical_id(self, canonical_id: str) -> User | None: ...

    async def by_email(self, email: str) -> User | None: ...


class StaticUsers:
    """A fixed set of users (from a TOML file or generated)."""

    def __init__(self, users: list[User]) -> None:
        self._by_key = {u.access_key: u for u in users}
        self._by_id = {u.canonical_id: u for u in users}
        self._by_email = {u.email.lower(): u for u in users if u.email}
        self.users = tuple(users)

    async def by_access_key(self, access_key: str) -> User | None:
        user = self._by_key.get(access_key)
        return user if user and user.enabled else None

    async def by_canonical_id(self, canonical_id: str) -> User | None:
        return self._by_id.get(canonical_id)

    async def by_email(self, email: str) -> User | None:
        return self._by_email.get(email.lower())


class UsersFileError(ValueError):
    pass


def load_users_file(path: Path) -> StaticUsers:
    """Parse a TOML users file: [[user]] tables with name, access_key, secret_key."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsersFileError(f"{path}: {exc}") from exc
    users = []
    for index, entry in enumerate(data.get("user", [])):
        missing = [f for f in ("name", "access_key", "secret_key") if not entry.get(f)]
        if missing:
            raise UsersFileError(f"{path}: user #{index + 1} lacks {', '.join(missing)}")
        users.append(User(name=str(entry["name"]), access_key=str(entry["access_key"]),
                          secret_key=str(entry["secret_key"]),
                          display_name=str(entry.get("display_name", entry["name"])),
                          email=str(entry.get("email", "")),
                          enabled=bool(entry.get("enabled", True))))
    if not users:
        raise UsersFileError(f"{path}: no [[user]] entries")
    names = [u.access_key for u in users]
    if len(set(names)) != len(names):
        raise UsersFileError(f"{path}: duplicate access_key")
    return StaticUsers(users)


def _random_key(length: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


ADMIN_CREDENTIALS_FILE = "admin.credentials"


def generated_admin(data_dir: Path) -> tuple[User, Path, bool]:
    """The admin user of a standalone Walrus, created on first start.

    Keys are written once to DATA_DIR/admin.credentials in aws-cli credentials format
    (mode 0600) and read back on later starts. Returns (user, path, created_now).
    """
    path = data_dir / ADMIN_CREDENTIALS_FILE
    if path.exists():
        values = {}
        for line in path.read_text().splitlines():
            name, eq, value = line.partition("=")
            if eq:
                values[name.strip()] = value.strip()
        user = User("admin", values["aws_access_key_id"], values["aws_secret_access_key"], "admin")
        return user, path, False
    access = "AKIA" + _random_key(16, string.ascii_uppercase + string.digits)
    secret = _random_key(40, string.ascii_letters + string.digits + "+/")
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"[default]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return User("admin", access, secret, "admin"), path, True
