"""What a visitor can do: request an account, see that it is pending, log in and out,
fetch the cloud's (public) certificate.

Login answers the same "wrong account, user or password" whether the user is unknown or
the password wrong (and spends the same scrypt time on both); only with the right
password does a pending or rejected request show its state. Failures count against the
account/user and the client address (throttle.py) before any password is checked.
"""

from __future__ import annotations

import logging

from aiohttp import web

from .. import identity as ids
from . import passwords, requests, sessions
from .app import PREFIX, console_of, page, redirect

log = logging.getLogger("eucalypt.control.console")


def add_routes(r: web.UrlDispatcher) -> None:
    r.add_get("/", home)
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/request", request_form)
    r.add_post("/request", submit_request)
    r.add_get("/cloud-cert.pem", cloud_certificate)


async def home(request: web.Request) -> web.Response:
    who = request["who"]
    if who is not None:
        raise redirect("admin" if who.is_admin else "user")
    raise redirect("login", request.query.get("done"))


async def login_form(request: web.Request) -> web.Response:
    if request["who"] is not None:
        raise redirect("")
    return page(request, "login.html", title="Log in", form={})


def _minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


async def login(request: web.Request) -> web.Response:
    console = console_of(request)
    form = request["form"]
    account_name = form.get("account", "").strip().lower()
    user_name = form.get("user", "").strip()
    password = form.get("password", "")
    shown = {"account": account_name, "user": user_name}
    user_key, address_key = f"user:{account_name}/{user_name}", f"addr:{request.remote}"
    wait = max(console.user_failures.retry_after(user_key), console.address_failures.retry_after(address_key))
    if wait:
        log.warning("console: login for %s/%s from %s throttled", account_name, user_name, request.remote)
        return page(request, "login.html", status=429, title="Log in", form=shown,
                    error=f"Too many failed logins. Try again in {_minutes(wait)}.")
    with console.store.read() as txn:
        try:
            account = ids.account_by_name(txn, account_name)
            user = ids.get_user(txn, account.id, user_name)
            encoded = passwords.get_hash(txn, account.id, user_name)
        except ids.NotFound:
            account = user = encoded = None
        asked = requests.latest_for(txn, account_name, user_name) if account is None else None
    if account is not None:
        ok = await console.hasher.verify(password, encoded)  # no console password: never matches
    elif asked is not None and asked[1] is not None:
        ok = False
        if await console.hasher.verify(password, asked[1]):  # the requester, asking how it went
            status = 200 if asked[0]["state"] == "pending" else 403
            return page(request, "pending.html", status=status, title=f"Request {asked[0]['state']}",
                        req=asked[0])
    else:
        ok = await console.hasher.verify(password, None)  # the same cost as a wrong password
    if ok:
        if not account.enabled or not user.enabled:
            log.info("console: login of disabled %s/%s refused", account_name, user_name)
            return page(request, "login.html", status=403, title="Log in", form=shown,
                        error="This user is disabled. Ask the cloud administrator.")
        console.user_failures.succeeded(user_key)
        console.start_session(request, sessions.logged_in(console.now(), account.id, user_name,
                                                          passwords.fingerprint(encoded)))
        log.info("console: %s/%s logged in from %s", account_name, user_name, request.remote)
        raise redirect("")
    console.user_failures.failed(user_key)
    console.address_failures.failed(address_key)
    log.info("console: failed login for %s/%s from %s", account_name, user_name, request.remote)
    return page(request, "login.html", status=401, title="Log in", form=shown,
                error="Wrong account, user name or password.")


async def logout(request: web.Request) -> web.Response:
    console_of(request).start_session(request, sessions.anonymous(console_of(request).now()))
    raise redirect("login", "logged-out")


async def request_form(request: web.Request) -> web.Response:
    return page(request, "request.html", title="Request an account", form={})


async def submit_request(request: web.Request) -> web.Response:
    console = console_of(request)
    form = request["form"]
    shown = {k: form.get(k, "").strip() for k in ("account", "user", "email")}
    shown["account"] = shown["account"].lower()
    password, again = form.get("password", ""), form.get("password2", "")

    def refuse(why: str, status: int = 400) -> web.Response:
        return page(request, "request.html", status=status, title="Request an account", form=shown, error=why)

    address_key = f"addr:{request.remote}"
    if wait := console.request_submissions.retry_after(address_key):
        return refuse(f"Too many requests from your address. Try again in {_minutes(wait)}.", 429)
    try:
        requests.validate(shown["account"], shown["user"], shown["email"])
        if password != again:
            raise requests.RequestError("The two passwords differ.")
        passwords.check_strength(password, names=(shown["account"], shown["user"]))
    except (requests.RequestError, passwords.WeakPassword) as exc:
        return refuse(str(exc))
    with console.store.read() as txn:
        taken = requests.name_taken(txn, shown["account"])
    if taken:
        return refuse(f"The account name {shown['account']!r} is already taken; please choose another.")
    encoded = await console.hasher.hash(password)
    try:
        rec = await console.store.write(lambda txn: requests.submit(
            txn, shown["account"], shown["user"], shown["email"], encoded, now=console.now()))
    except requests.RequestError as exc:
        return refuse(str(exc))
    console.request_submissions.failed(address_key)  # counts submissions, not failures
    log.info("console: account request %s for %s/%s from %s", rec["id"], rec["account"], rec["user"],
             request.remote)
    return page(request, "pending.html", title="Request pending", req=rec)


async def cloud_certificate(request: web.Request) -> web.Response:
    cert = console_of(request).service.ca.cert_pem
    return web.Response(text=cert, content_type="application/x-pem-file",
                        headers={"Content-Disposition": 'attachment; filename="cloud-cert.pem"'})


__all__ = ["add_routes", "PREFIX"]
