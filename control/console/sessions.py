"""Console sessions: a signed cookie, and the CSRF token it carries.

The cookie is ``base64(json payload) . base64(HMAC-SHA256(key, payload))``; the key is
DATA/console.key (32 random bytes, mode 0600, made on first start), so sessions survive
a control restart and cannot be forged without the data dir. Payload::

    {"c": CSRF token, "t": issued (unix time),
     "a": account id, "u": user name, "p": password fingerprint}   (the last three once logged in)

Every visitor gets a session (an anonymous one only holds the CSRF token), so the
request and login forms are protected too. Logging in issues a fresh session (new CSRF
token: nothing fixed before login survives it). A logged-in session is honoured only
while it is younger than MAX_AGE, its user and account are enabled and its password
fingerprint is the current one (checked by the app on every request).

The cookie is HttpOnly, SameSite=Strict, Path=/console/, and Secure when served over
https.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..ca import write_private

COOKIE = "eucalypt_console"
KEY_FILE = "console.key"
MAX_AGE = 8 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    issued: float
    account_id: str | None = None
    user: str | None = None
    password_tag: str | None = None

    @property
    def logged_in(self) -> bool:
        return self.account_id is not None


def load_key(data_dir: Path) -> bytes:
    """The signing key from DATA/console.key, created (0600) if missing."""
    path = Path(data_dir) / KEY_FILE
    if not path.exists():
        write_private(path, secrets.token_bytes(32))
    key = path.read_bytes()
    if len(key) < 32:
        raise ValueError(f"{path} is too short to be a signing key")
    os.chmod(path, 0o600)
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionCodec:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, b"eucalypt-console-session\0" + payload, hashlib.sha256).digest()

    def encode(self, session: Session) -> str:
        doc = {"c": session.csrf, "t": session.issued}
        if session.logged_in:
            doc.update(a=session.account_id, u=session.user, p=session.password_tag)
        payload = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def decode(self, value: str | None, *, now: float) -> Session | None:
        """The session in a cookie value, or None if it is absent, forged or expired."""
        if not value or "." not in value or len(value) > 4096:
            return None
        payload_b64, mac_b64 = value.split(".", 1)
        try:
            payload, mac = _unb64(payload_b64), _unb64(mac_b64)
        except ValueError:
            return None
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            doc = json.loads(payload)
            session = Session(str(doc["c"]), float(doc["t"]), doc.get("a"), doc.get("u"), doc.get("p"))
        except (ValueError, KeyError, TypeError):
            return None
        if not 0 <= now - session.issued < MAX_AGE:
            return None
        return session


def anonymous(now: float) -> Session:
    return Session(secrets.token_urlsafe(24), now)


def logged_in(now: float, account_id: str, user: str, password_tag: str) -> Session:
    return Session(secrets.token_urlsafe(24), now, account_id, user, password_tag)


def csrf_matches(session: Session | None, token: str | None) -> bool:
    return session is not None and bool(token) and hmac.compare_digest(session.csrf.encode(), token.encode())
