"""The console's views of a working cloud: a real node (libvirt's test driver) with its
capacity, an image bundled and registered with the credentials from the console's zip,
an instance of it; the administrator sees all of them across accounts, the owner sees
hers, and another user sees none of them."""

from __future__ import annotations

import random
import time

import pytest

from consoletest import (ADMIN_PASSWORD, ConsoleClient, approved_user, eucarc_environment, set_console_password,
                         start_test_node, unpack_credentials)
from controltest import Keys, ec2_client, register_image, start_cloud

PASSWORD = "Ironbark-ridge-77"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    root = tmp_path_factory.mktemp("console-cloud")
    cloud = start_cloud(root, control_extra=["--heartbeat-interval", "0.5"])
    assert set_console_password(cloud.control_dir, "eucalyptus", "admin", ADMIN_PASSWORD).returncode == 0
    node = start_test_node(root, cloud, "node-1", cores=8, memory_mib=4096)
    yield cloud, root
    node.stop()
    cloud.stop()


async def test_admin_sees_every_account_owner_sees_hers_others_see_nothing(cloud):
    cloud, root = cloud
    async with ConsoleClient(cloud.control.url) as admin:
        await admin.login("eucalyptus", "admin", ADMIN_PASSWORD)
        page = await admin.get("admin/cloud")
        assert "nc-" in page.text and "reachable" in page.text and "8 / 8" in page.text
        for account, user in (("karri", "kim"), ("jarrah", "jon")):
            await approved_user(cloud.control.url, admin, account, user, PASSWORD)
        async with ConsoleClient(cloud.control.url) as kim, ConsoleClient(cloud.control.url) as jon:
            await kim.login("karri", "kim", PASSWORD)
            await jon.login("jarrah", "jon", PASSWORD)
            folder = unpack_credentials((await kim.post("user/credentials.zip")).body, root / "kim")
            env = eucarc_environment(folder, root)
            ec2 = ec2_client(cloud.control.url, Keys("karri", "kim", env["AWS_ACCESS_KEY_ID"],
                                                     env["AWS_SECRET_ACCESS_KEY"]))
            image = root / "kim-root.img"
            image.write_bytes(random.Random(3).randbytes(1 << 19) + bytes(1 << 19))
            # euca-bundle-image + upload with the zip's eucarc (cert.pem, pk.pem, cloud-cert.pem).
            image_id = register_image(ec2, env, image, root / "bundle", "kim-images", name="kim's root")
            instance_id = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1,
                                            InstanceType="m1.small")["Instances"][0]["InstanceId"]
            deadline = time.monotonic() + 30
            while ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0][
                    "State"]["Name"] != "running":
                assert time.monotonic() < deadline, "the instance did not start"
                time.sleep(0.3)

            page = await kim.get("user/images")
            assert image_id in page.text and "kim&#39;s root" in page.text
            page = await kim.get("user/instances")
            assert instance_id in page.text and "running" in page.text
            for path in ("user/images", "user/instances"):
                page = await jon.get(path)
                assert image_id not in page.text and instance_id not in page.text, path
            page = await admin.get("admin/images")
            assert image_id in page.text and "karri" in page.text
            page = await admin.get("admin/instances")
            assert instance_id in page.text and "karri" in page.text and "running" in page.text
            page = await admin.get("admin/cloud")
            assert "7 / 8" in page.text  # one core of the node's eight is taken
            ec2.terminate_instances(InstanceIds=[instance_id])
