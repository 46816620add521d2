"""The console's aiohttp application: routes, the session + CSRF middleware, rendering.

    console = Console(service)         # service: control's ControlService
    app = console.build_app()          # mounted by ControlServer at /console/

Every response goes through ``_middleware``: it reads (or starts) the visitor's signed
session (sessions.py), drops a logged-in session whose user, account or password is no
longer what it was, refuses any POST whose form lacks the session's CSRF token (403),
sets the cookie when it changed, and adds headers that keep pages out of caches and
frames. Views live in visitor.py, admin.py and user.py; each gets ``request["who"]``
(a ``Who`` or None).

Administrators are the users of the ``eucalyptus`` account (as in Eucalyptus, whose
cloud administrators were that account's users).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources

import aiohttp_jinja2
import jinja2
from aiohttp import web

from .. import identity as ids
from . import passwords, sessions
from .throttle import Throttle

log = logging.getLogger("eucalypt.control.console")

PREFIX = "/console/"
ACCOUNT_FAILURES, ADDRESS_FAILURES, FAILURE_WINDOW = 5, 20, 900.0
REQUESTS_PER_ADDRESS, REQUEST_WINDOW = 30, 3600.0  # account requests an address may file
MESSAGES = {  # ?done=CODE after a successful POST: fixed texts, nothing secret in a URL
    "approved": "The request was approved: the account, its user and an access key now exist.",
    "rejected": "The request was rejected.",
    "disabled": "The user was disabled: its access keys stop working at once.",
    "enabled": "The user was enabled again.",
    "key-deleted": "The access key was deleted; it no longer works.",
    "logged-out": "You are logged out.",
}


@dataclass(frozen=True, slots=True)
class Who:
    account: ids.Account
    user: ids.User

    @property
    def is_admin(self) -> bool:
        return self.account.name == ids.ADMIN_ACCOUNT

    @property
    def label(self) -> str:
        return f"{self.account.name}/{self.user.name}"


class Console:
    def __init__(self, service) -> None:
        self.service = service
        self.codec = sessions.SessionCodec(sessions.load_key(service.data.path))
        self.hasher = passwords.Hasher()
        clock = service.clock
        self.user_failures = Throttle(clock, ACCOUNT_FAILURES, FAILURE_WINDOW)
        self.address_failures = Throttle(clock, ADDRESS_FAILURES, FAILURE_WINDOW)
        self.request_submissions = Throttle(clock, REQUESTS_PER_ADDRESS, REQUEST_WINDOW)
        self._css = resources.files(__package__).joinpath("static/console.css").read_bytes()

    @property
    def store(self):
        return self.service.store

    def now(self) -> float:
        return self.service.clock.now()

    def build_app(self) -> web.Application:
        from . import admin, user, visitor

        app = web.Application(middlewares=[self._middleware])
        app["console"] = self
        aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader(__package__, "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
        r = app.router
        r.add_get("/static/console.css", self._stylesheet)
        visitor.add_routes(r)
        admin.add_routes(r)
        user.add_routes(r)
        return app

    async def _stylesheet(self, request: web.Request) -> web.Response:
        return web.Response(body=self._css, content_type="text/css", headers={"Cache-Control": "max-age=300"})

    # ---- sessions ---------------------------------------------------------------------
    def _who(self, session: sessions.Session) -> Who | None:
        with self.store.read() as txn:
            account = ids.account_by_id(txn, session.account_id)
            if account is None or not account.enabled:
                return None
            try:
                user = ids.get_user(txn, account.id, session.user)
            except ids.NotFound:
                return None
            encoded = passwords.get_hash(txn, account.id, user.name)
        if not user.enabled or encoded is None or passwords.fingerprint(encoded) != session.password_tag:
            return None
        return Who(account, user)

    def start_session(self, request: web.Request, session: sessions.Session) -> None:
        """Make `session` the visitor's from this response on."""
        request["session"] = session
        request["session_changed"] = True

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        now = self.now()
        session = self.codec.decode(request.cookies.get(sessions.COOKIE), now=now)
        request["session_changed"] = session is None
        if session is None:
            session = sessions.anonymous(now)
        who = self._who(session) if session.logged_in else None
        if session.logged_in and who is None:  # disabled, deleted or password changed: log out
            session, request["session_changed"] = sessions.anonymous(now), True
        request["session"], request["who"] = session, who
        try:
            if request.method == "POST":
                form = await request.post()
                request["form"] = form
                if not sessions.csrf_matches(session, form.get("csrf")):
                    log.warning("console: %s %s refused: missing or wrong CSRF token (from %s)",
                                request.method, request.path, request.remote)
                    raise web.HTTPForbidden(text="Forbidden: this form has expired or did not come from this "
                                                 "console. Reload the page and try again.")
            elif request.method not in ("GET", "HEAD"):
                raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
            response = await handler(request)
        except web.HTTPException as exc:
            self._finish(request, exc)
            raise
        self._finish(request, response)
        return response

    def _finish(self, request: web.Request, response: web.StreamResponse) -> None:
        if request["session_changed"]:
            response.set_cookie(sessions.COOKIE, self.codec.encode(request["session"]), path=PREFIX,
                                httponly=True, samesite="Strict", secure=request.secure, max_age=sessions.MAX_AGE)
        headers = response.headers
        headers.setdefault("Cache-Control", "no-store")
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Content-Security-Policy"] = ("default-src 'none'; style-src 'self'; img-src 'self'; "
                                              "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


# ---- helpers for the views -----------------------------------------------------------------

def console_of(request: web.Request) -> Console:
    return request.app["console"]


def page(request: web.Request, template: str, *, status: int = 200, **context) -> web.Response:
    """Render a template with what every page shows (who, the CSRF token, a done message)."""
    done = request.query.get("done")
    base = {"who": request["who"], "csrf": request["session"].csrf, "prefix": PREFIX,
            "message": context.pop("message", None) or MESSAGES.get(done or ""), "error": None,
            "title": "", "nav": ""}
    base.update(context)
    return aiohttp_jinja2.render_template(template, request, base, status=status)


def require_user(request: web.Request) -> Who:
    who = request["who"]
    if who is None:
        raise web.HTTPSeeOther(PREFIX + "login")
    return who


def require_admin(request: web.Request) -> Who:
    who = require_user(request)
    if not who.is_admin:
        raise web.HTTPForbidden(text="Forbidden: this page is for cloud administrators.")
    return who


def redirect(path: str, done: str | None = None) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(PREFIX + path + (f"?done={done}" if done else ""))
