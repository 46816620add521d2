"""The whole console flow in a real headless Chromium (Debian's `chromium`, driven by
Playwright for Python with its executable path pointed at it; Playwright's own browser
download is never used): request an account, log in as the administrator, approve, log
in as the user, download the credentials zip, unpack it, `source eucarc`, then
`aws ec2 describe-images` and `aws s3 ls` with those credentials.

Every page is saved as a screenshot under tests/console/artifacts/ (git-ignored); the
administrator's request list also goes to docs/console.png (the README's) when
EUCALYPT_README_SHOT=1, so that a test run leaves the tree as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from consoletest import ADMIN_PASSWORD, eucarc_environment, set_console_password, unpack_credentials
from controltest import ROOT, VENV_BIN, start_cloud

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
README_SHOT = ROOT / "docs" / "console.png"
PASSWORD = "Gum-tree-canopy-42"

playwright_api = pytest.importorskip("playwright.async_api",
                                     reason="LOUD SKIP: playwright is not installed (pip install -e '.[test]')")
if not CHROMIUM.exists():
    pytest.skip(f"LOUD SKIP: {CHROMIUM} is missing: the browser test needs Debian's chromium "
                "(apt-get install -y chromium; `make apt` installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    cloud = start_cloud(tmp_path_factory.mktemp("console-browser"))
    done = set_console_password(cloud.control_dir, "eucalyptus", "admin", ADMIN_PASSWORD)
    assert done.returncode == 0, done.stderr
    yield cloud
    cloud.stop()


async def test_whole_flow_in_chromium(cloud, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    base = cloud.control.url.rstrip("/") + "/console/"
    shots: list[str] = []

    async def shot(page, name: str) -> None:
        await page.screenshot(path=str(ARTIFACTS / f"{len(shots) + 1:02d}-{name}.png"), full_page=True)
        shots.append(name)

    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                           args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            viewport = {"width": 1100, "height": 720}
            # ---- a visitor asks for an account
            visitor = await (await browser.new_context(viewport=viewport)).new_page()
            await visitor.goto(base)
            assert visitor.url.endswith("/console/login")
            await shot(visitor, "login")
            await visitor.click("text=Request an account")
            await visitor.fill("input[name=account]", "wattle")
            await visitor.fill("input[name=user]", "wendy")
            await visitor.fill("input[name=email]", "wendy@example.com")
            await visitor.fill("input[name=password]", "weak")
            await visitor.fill("input[name=password2]", "weak")
            await visitor.click("button[type=submit]")
            assert "at least 10 characters" in await visitor.inner_text(".note.bad")
            await shot(visitor, "request-refused")
            await visitor.fill("input[name=password]", PASSWORD)
            await visitor.fill("input[name=password2]", PASSWORD)
            await shot(visitor, "request")
            await visitor.click("button[type=submit]")
            assert await visitor.inner_text(".state") == "Pending"
            await shot(visitor, "pending")

            # ---- the administrator approves it
            admin = await (await browser.new_context(viewport=viewport)).new_page()
            await admin.goto(base + "login")
            await admin.fill("input[name=account]", "eucalyptus")
            await admin.fill("input[name=user]", "admin")
            await admin.fill("input[name=password]", ADMIN_PASSWORD)
            await admin.click("button[type=submit]")
            assert admin.url.endswith("/console/admin")
            await shot(admin, "admin-overview")
            await admin.click("nav >> text=Requests")
            assert "wendy@example.com" in await admin.inner_text(".request")
            await shot(admin, "admin-requests")
            if os.environ.get("EUCALYPT_README_SHOT") == "1":  # refresh the README's picture on demand
                await admin.screenshot(path=str(README_SHOT))
            await admin.click(".request button[name=approve]")
            assert "was approved" in await admin.inner_text(".note.ok")
            await shot(admin, "admin-approved")
            for nav, name in (("Users", "admin-users"), ("Clusters", "admin-clusters"), ("Images", "admin-images"),
                              ("Instances", "admin-instances")):
                await admin.click(f"nav >> text={nav}")
                if nav == "Users":
                    assert "wattle" in await admin.inner_text("#user-wattle-wendy")
                await shot(admin, name)

            # ---- the user logs in and takes the credentials
            context = await browser.new_context(viewport=viewport, accept_downloads=True)
            user = await context.new_page()
            await user.goto(base + "login")
            await user.fill("input[name=account]", "wattle")
            await user.fill("input[name=user]", "wendy")
            await user.fill("input[name=password]", PASSWORD)
            await user.click("button[type=submit]")
            assert user.url.endswith("/console/user")
            await shot(user, "user-credentials")
            async with user.expect_download() as download_info:
                await user.click("#download-credentials")
            download = await download_info.value
            assert download.suggested_filename == "wattle-wendy-credentials.zip"
            zip_path = tmp_path / download.suggested_filename
            await download.save_as(str(zip_path))
            async with user.expect_download() as cert_info:
                await user.click("#cloud-cert")
            cert_path = tmp_path / "cloud-cert.pem"
            await (await cert_info.value).save_as(str(cert_path))
            assert cert_path.read_text() == (cloud.control_dir / "cloud-cert.pem").read_text()

            folder = unpack_credentials(zip_path.read_bytes(), tmp_path / "unpacked")
            env = eucarc_environment(folder, tmp_path)
            aws = str(VENV_BIN / "aws")
            images = subprocess.run([aws, "ec2", "describe-images", "--endpoint-url", env["EC2_URL"]], env=env,
                                    capture_output=True, text=True, timeout=60)
            assert images.returncode == 0 and "Images" in images.stdout, images.stderr
            for args in (["s3", "mb", "s3://wendy-bucket"], ["ec2", "create-key-pair", "--key-name", "wendy-key"]):
                url = env["S3_URL"] if args[0] == "s3" else env["EC2_URL"]
                made = subprocess.run([aws, *args, "--endpoint-url", url], env=env, capture_output=True, text=True,
                                      timeout=60)
                assert made.returncode == 0, made.stderr
            listing = subprocess.run([aws, "s3", "ls", "--endpoint-url", env["S3_URL"]], env=env,
                                     capture_output=True, text=True, timeout=60)
            assert listing.returncode == 0 and "wendy-bucket" in listing.stdout, listing.stderr

            await user.click("#rotate-key")
            assert await user.inner_text("#new-access-key") != env["AWS_ACCESS_KEY_ID"]
            await shot(user, "user-key-rotated")
            for nav, name, expect in (("Key pairs", "user-keypairs", "wendy-key"), ("Groups", "user-groups", ""),
                                      ("Buckets", "user-buckets", "wendy-bucket"),
                                      ("Instances", "user-instances", ""), ("Images", "user-images", "")):
                await user.click(f"nav >> text={nav}")
                if expect:
                    assert expect in await user.inner_text("main")
                await shot(user, name)

            # ---- the same page at phone width
            phone = await (await browser.new_context(viewport={"width": 390, "height": 844}, storage_state=await
                                                     context.storage_state())).new_page()
            await phone.goto(base + "user")
            width = await phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the page is {width}px wide at phone width"
            await shot(phone, "phone-user")
            await phone.goto(base + "request")
            await shot(phone, "phone-request")
        finally:
            await browser.close()
    assert len(shots) >= 15 and all((ARTIFACTS / f"{i + 1:02d}-{n}.png").stat().st_size > 1000
                                    for i, n in enumerate(shots))
    assert shutil.which(str(CHROMIUM))
