"""The web console over HTTP against a real `eucalypt control` + Walrus: request an
account, approve it, log in, download and use the credentials zip with the aws cli;
rejection, the command line, key rotation, disabling, CSRF, throttling, isolation."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import time

import botocore.exceptions
import pytest
from yarl import URL

from consoletest import (ADMIN_PASSWORD, ConsoleClient, approved_user, eucarc_environment, request_id_in,
                         set_console_password, unpack_credentials)
from controltest import VENV_BIN, Keys, admin, ec2_client, start_cloud
from walrustest import UserKeys, s3_client

PASSWORD = "Tr0ub4dor&3-horse"
CREDENTIAL_FILES = sorted(["eucarc", "iamrc", "cert.pem", "pk.pem", "cloud-cert.pem", "aws-config",
                           "euca2ools.ini", "s3cfg"])


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    cloud = start_cloud(tmp_path_factory.mktemp("console-http"))
    done = set_console_password(cloud.control_dir, "eucalyptus", "admin", ADMIN_PASSWORD)
    assert done.returncode == 0, done.stderr
    yield cloud
    cloud.stop()


@pytest.fixture
async def admin_client(cloud):
    async with ConsoleClient(cloud.control.url) as client:
        page = await client.login("eucalyptus", "admin", ADMIN_PASSWORD)
        assert page.status == 200 and page.url.endswith("/console/admin"), (page.status, page.url)
        yield client


def test_admin_password_cli_refuses_weak_and_unknown(cloud):
    weak = set_console_password(cloud.control_dir, "eucalyptus", "admin", "short")
    assert weak.returncode == 1 and "at least 10 characters" in weak.stderr
    unknown = set_console_password(cloud.control_dir, "eucalyptus", "nobody", ADMIN_PASSWORD)
    assert unknown.returncode == 1 and "no user" in unknown.stderr


async def test_request_approve_login_download_and_use(cloud, admin_client, tmp_path):
    url = cloud.control.url
    async with ConsoleClient(url) as visitor:
        page = await visitor.request_account("acme", "ann", PASSWORD, "ann@example.com")
        assert page.status == 200 and "Pending" in page.text and "acme" in page.text
        request_id = request_id_in(page.text)
        # Duplicate names and weak passwords are refused with a clear message.
        again = await visitor.request_account("acme", "other", PASSWORD)
        assert again.status == 400 and "already taken" in again.text
        weak = await visitor.request_account("acme-two", "ann", "password")
        assert weak.status == 400 and "at least 10 characters" in weak.text
        weak = await visitor.request_account("acme-two", "ann", "aaaaaaaaaaaaaa")
        assert weak.status == 400 and "two kinds" in weak.text
        differ = await visitor.request_account("acme-two", "ann", PASSWORD)
        assert differ.status == 200  # a second, different account name is fine
        # Pending: the requester sees that, and nothing of the cloud exists yet.
        page = await visitor.login("acme", "ann", PASSWORD)
        assert page.status == 200 and "Pending" in page.text
        page = await visitor.login("acme", "ann", "wrong-Password-1")
        assert page.status == 401 and "Pending" not in page.text
    assert "\tacme\t" not in admin(cloud.control_dir, "account", "list").stdout
    listed = admin(cloud.control_dir, "request", "list").stdout
    assert f"{request_id}\tpending\tacme\tann\tann@example.com" in listed

    page = await admin_client.get("admin/requests")
    assert request_id in page.text and "ann@example.com" in page.text
    page = await admin_client.post(f"admin/requests/{request_id}/approve")
    assert page.status == 200 and "was approved" in page.text
    page = await admin_client.post(f"admin/requests/{request_id}/approve")
    assert page.status == 400 and "already approved" in page.text
    assert "\tacme\tenabled" in admin(cloud.control_dir, "account", "list").stdout

    async with ConsoleClient(url) as user:
        page = await user.login("acme", "ann", PASSWORD)
        assert page.url.endswith("/console/user") and "Download credentials" in page.text
        assert (await user.get("admin/requests")).status == 403  # not an administrator
        cert = await user.get("cloud-cert.pem")
        assert cert.body.decode() == (cloud.control_dir / "cloud-cert.pem").read_text()
        page = await user.post("user/credentials.zip")
        assert page.status == 200 and page.headers["Content-Type"] == "application/zip"
        assert "acme-ann-credentials.zip" in page.headers["Content-Disposition"]
        folder = unpack_credentials(page.body, tmp_path)
        assert sorted(p.name for p in folder.iterdir()) == CREDENTIAL_FILES
        assert stat.S_IMODE(os.stat(folder / "pk.pem").st_mode) == 0o600
        assert str(tmp_path) not in (folder / "euca2ools.ini").read_text()

        env = eucarc_environment(folder, tmp_path)
        assert env["AWS_ACCESS_KEY_ID"].startswith("AKIA") and env["EC2_CERT"] == str(folder / "cert.pem")
        aws = str(VENV_BIN / "aws")
        images = subprocess.run([aws, "--endpoint-url", env["EC2_URL"], "ec2", "describe-images", "--output", "json"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert images.returncode == 0 and '"Images"' in images.stdout, images.stderr
        made = subprocess.run([aws, "--endpoint-url", env["S3_URL"], "s3", "mb", "s3://ann-bucket"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        listing = subprocess.run([aws, "--endpoint-url", env["S3_URL"], "s3", "ls"], env=env, capture_output=True,
                                 text=True, timeout=60)
        assert listing.returncode == 0 and "ann-bucket" in listing.stdout, listing.stderr
        page = await user.get("user/buckets")
        assert "ann-bucket" in page.text

        # Rotation as in IAM: a second key; the first keeps working until it is deleted.
        first = Keys("acme", "ann", env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
        page = await user.post("user/keys/rotate")
        assert page.status == 200 and "shown only this once" in page.text
        import re
        second = Keys("acme", "ann", re.search(r'id="new-access-key">(\w+)<', page.text).group(1),
                      re.search(r'id="new-secret-key">([^<]+)<', page.text).group(1))
        ec2_client(cloud.control.url, first).describe_key_pairs()
        ec2_client(cloud.control.url, second).describe_key_pairs()
        page = await user.post("user/keys/rotate")
        assert page.status == 409 and "delete the one you no longer use" in page.text
        page = await user.post(f"user/keys/{first.access_key}/delete")
        assert page.status == 200 and "was deleted" in page.text
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            ec2_client(cloud.control.url, first).describe_key_pairs()
        assert excinfo.value.response["Error"]["Code"] == "AuthFailure"
        ec2_client(cloud.control.url, second).describe_key_pairs()
        page = await user.post(f"user/keys/{second.access_key}/delete")
        assert page.status == 400 and "only access key" in page.text
        # A new zip carries the newest key.
        page = await user.post("user/credentials.zip")
        folder = unpack_credentials(page.body, tmp_path / "again")
        assert f"AWS_ACCESS_KEY_ID={second.access_key}" in (folder / "eucarc").read_text()


async def test_reject_path(cloud, admin_client):
    async with ConsoleClient(cloud.control.url) as visitor:
        page = await visitor.request_account("beta", "bob", PASSWORD)
        request_id = request_id_in(page.text)
    page = await admin_client.post(f"admin/requests/{request_id}/reject", {"reason": "  "})
    assert page.status == 400 and "give a reason" in page.text
    page = await admin_client.post(f"admin/requests/{request_id}/reject", {"reason": "unknown to us"})
    assert page.status == 200 and "was rejected" in page.text and "unknown to us" in page.text
    assert "\tbeta\t" not in admin(cloud.control_dir, "account", "list").stdout
    approve = admin(cloud.control_dir, "request", "approve", request_id, check=False)
    assert approve.returncode == 1 and "already rejected" in approve.stderr
    async with ConsoleClient(cloud.control.url) as visitor:
        page = await visitor.login("beta", "bob", PASSWORD)  # the requester reads the reason
        assert page.status == 403 and "Rejected" in page.text and "unknown to us" in page.text
        page = await visitor.login("beta", "bob", "Not-the-password-1")  # nobody else does
        assert page.status == 401 and "unknown to us" not in page.text
        assert (await visitor.get("user")).url.endswith("/console/login")
        # The name is free again once the request was rejected.
        page = await visitor.request_account("beta", "bob", PASSWORD)
        assert page.status == 200 and "Pending" in page.text


async def test_command_line_approve_and_reject(cloud):
    async with ConsoleClient(cloud.control.url) as visitor:
        one = request_id_in((await visitor.request_account("cli-one", "cat", PASSWORD)).text)
        two = request_id_in((await visitor.request_account("cli-two", "dan", PASSWORD)).text)
    listed = admin(cloud.control_dir, "request", "list").stdout
    assert one in listed and two in listed
    out = admin(cloud.control_dir, "request", "approve", one).stdout
    assert "approved" in out and "cli-one" in out
    admin(cloud.control_dir, "request", "reject", two, "--reason", "duplicate of cli-one")
    assert two not in admin(cloud.control_dir, "request", "list").stdout
    assert "duplicate of cli-one" in admin(cloud.control_dir, "request", "list", "--all").stdout
    assert "cli-one\tcat\tenabled\tAKIA" in admin(cloud.control_dir, "user", "list").stdout
    assert "cli-two" not in admin(cloud.control_dir, "user", "list").stdout
    async with ConsoleClient(cloud.control.url) as user:
        page = await user.login("cli-one", "cat", PASSWORD)
        assert page.url.endswith("/console/user")


async def _wait_refused(call, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await asyncio.to_thread(call)
        except botocore.exceptions.ClientError as exc:
            return exc.response["Error"]["Code"]
        assert time.monotonic() < deadline, "still accepted"
        await asyncio.sleep(0.5)


async def _wait_accepted(call, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await asyncio.to_thread(call)
            return
        except botocore.exceptions.ClientError:
            assert time.monotonic() < deadline, "still refused"
            await asyncio.sleep(0.5)


async def test_disabled_user_keys_stop_on_ec2_and_s3(cloud, admin_client, tmp_path):
    await approved_user(cloud.control.url, admin_client, "delta", "dora", PASSWORD)
    async with ConsoleClient(cloud.control.url) as user:
        await user.login("delta", "dora", PASSWORD)
        folder = unpack_credentials((await user.post("user/credentials.zip")).body, tmp_path)
        env = eucarc_environment(folder, tmp_path)
        keys = Keys("delta", "dora", env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
        ec2 = ec2_client(cloud.control.url, keys)
        s3 = s3_client(cloud.walrus.url, UserKeys("dora", keys.access_key, keys.secret_key))
        ec2.describe_key_pairs()
        s3.create_bucket(Bucket="dora-bucket")

        page = await admin_client.post("admin/users/delta/dora/disable")
        assert page.status == 200 and "was disabled" in page.text
        assert await _wait_refused(ec2.describe_key_pairs) == "AuthFailure"
        assert await _wait_refused(s3.list_buckets) in ("InvalidAccessKeyId", "AccessDenied")
        # Her console session ends too, and she cannot log in again.
        assert (await user.get("user")).url.endswith("/console/login")
        page = await user.login("delta", "dora", PASSWORD)
        assert page.status == 403 and "disabled" in page.text

        page = await admin_client.post("admin/users/delta/dora/enable")
        assert page.status == 200 and "enabled again" in page.text
        await _wait_accepted(ec2.describe_key_pairs)
        await _wait_accepted(s3.list_buckets)
        assert (await user.login("delta", "dora", PASSWORD)).url.endswith("/console/user")
    page = await admin_client.post("admin/users/eucalyptus/admin/disable")
    assert page.status == 400 and "cannot disable yourself" in page.text


async def test_forms_without_csrf_token_are_refused(cloud, admin_client):
    async with ConsoleClient(cloud.control.url) as visitor:
        for path, form in [("request", {"account": "nocsrf", "user": "x", "email": "x@example.com",
                                        "password": PASSWORD, "password2": PASSWORD}),
                           ("login", {"account": "eucalyptus", "user": "admin", "password": ADMIN_PASSWORD})]:
            page = await visitor.post(path, form, csrf=False)
            assert page.status == 403, path
            page = await visitor.post(path, {**form, "csrf": "forged-token"}, csrf=False)
            assert page.status == 403, path
        await visitor.get("request")
        stolen = visitor.csrf
    # The admin's session is real, but a token from another session (or none) is refused.
    page = await admin_client.post("admin/users/eucalyptus/admin/disable", {"csrf": stolen}, csrf=False)
    assert page.status == 403
    page = await admin_client.post("user/keys/rotate", csrf=False)
    assert page.status == 403
    page = await admin_client.post("user/credentials.zip", csrf=False)
    assert page.status == 403
    assert "\tnocsrf\t" not in admin(cloud.control_dir, "request", "list").stdout
    # A tampered session cookie is no session at all.
    async with ConsoleClient(cloud.control.url) as forger:
        cookie = admin_client.http.cookie_jar.filter_cookies(URL(admin_client.base))["eucalypt_console"].value
        payload, mac = cookie.split(".")
        forger.http.cookie_jar.update_cookies({"eucalypt_console": payload + "." + mac[::-1]})
        assert (await forger.get("admin")).url.endswith("/console/login")
    page = await admin_client.get("admin")
    assert page.status == 200
    cookie_header = next(v for k, v in page.headers.items() if k.lower() == "set-cookie") \
        if "Set-Cookie" in page.headers else None
    assert cookie_header is None  # the session is not re-issued on every page
    login_page = await ConsoleClient(cloud.control.url).__aenter__()
    try:
        page = await login_page.get("login")
        cookie = page.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console/" in cookie
        assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
    finally:
        await login_page.close()


async def test_wrong_passwords_are_throttled_per_user_and_per_address(cloud, admin_client):
    await approved_user(cloud.control.url, admin_client, "throttled", "tina", PASSWORD)
    async with ConsoleClient(cloud.control.url, source_address="127.0.0.2") as attacker:
        for attempt in range(5):
            page = await attacker.login("throttled", "tina", f"Wrong-guess-{attempt}")
            assert page.status == 401
        page = await attacker.login("throttled", "tina", PASSWORD)  # even the right one, now
        assert page.status == 429 and "Too many failed logins" in page.text
    async with ConsoleClient(cloud.control.url, source_address="127.0.0.3") as elsewhere:
        page = await elsewhere.login("throttled", "tina", PASSWORD)  # per user: any address
        assert page.status == 429
        # Per address: one address guessing many users is stopped as well.
        for attempt in range(20):
            page = await elsewhere.login("throttled", f"guess{attempt}", PASSWORD)
            assert page.status == 401, attempt
        await approved_user(cloud.control.url, admin_client, "roomy", "rita", PASSWORD)
        page = await elsewhere.login("roomy", "rita", PASSWORD)
        assert page.status == 429
    async with ConsoleClient(cloud.control.url, source_address="127.0.0.4") as fresh:
        page = await fresh.login("roomy", "rita", PASSWORD)
        assert page.url.endswith("/console/user")


async def test_one_user_never_sees_anothers_resources(cloud, admin_client, tmp_path):
    owners = {}
    try:
        for account, user in (("iso-a", "amy"), ("iso-b", "ben")):
            await approved_user(cloud.control.url, admin_client, account, user, PASSWORD)
            client = owners[user] = ConsoleClient(cloud.control.url)
            await client.login(account, user, PASSWORD)
            folder = unpack_credentials((await client.post("user/credentials.zip")).body, tmp_path / user)
            env = eucarc_environment(folder, tmp_path)
            keys = Keys(account, user, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
            ec2 = ec2_client(cloud.control.url, keys)
            ec2.create_key_pair(KeyName=f"{user}-key")
            ec2.create_security_group(GroupName=f"{user}-group", Description=f"{user}'s group")
            s3_client(cloud.walrus.url, UserKeys(user, keys.access_key, keys.secret_key)).create_bucket(
                Bucket=f"{user}-bucket")
        for me, other in (("amy", "ben"), ("ben", "amy")):
            client = owners[me]
            for kind, mine in (("keypairs", f"{me}-key"), ("groups", f"{me}-group"), ("buckets", f"{me}-bucket")):
                page = await client.get(f"user/{kind}")
                assert page.status == 200 and mine in page.text, (me, kind)
                assert other not in page.text, (me, kind)
            for kind in ("instances", "images"):
                assert other not in (await client.get(f"user/{kind}")).text
            assert (await client.get("admin/users")).status == 403
            assert (await client.get("admin/instances")).status == 403
        page = await admin_client.get("admin/users")
        assert "iso-a" in page.text and "iso-b" in page.text
    finally:
        for client in owners.values():
            await client.close()


async def test_admin_pages_render(cloud, admin_client):
    for path, expect in (("admin", "pending request"), ("admin/cloud", "Capacity by instance type"),
                         ("admin/images", "Images (all accounts)"), ("admin/instances", "Instances (all accounts)"),
                         ("admin/users", "eucalyptus")):
        page = await admin_client.get(path)
        assert page.status == 200 and expect in page.text, path
    page = await admin_client.get("admin/cloud")
    assert "m1.small" in page.text and "eucalyptusa" in page.text
    page = await admin_client.post("logout")
    assert page.url.endswith("/console/login?done=logged-out") and "logged out" in page.text
    assert (await admin_client.get("admin")).url.endswith("/console/login")
