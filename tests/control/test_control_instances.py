"""Instances through a real control, Walrus and `eucalypt node` (libvirt's test driver):
run, describe (filters, pagination, reservations), status, terminate, reboot, console,
ClientToken idempotency, capacity, the node's view reconciled into control's, two
accounts kept apart, and the aws cli."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time

import botocore.exceptions
import pytest

from controltest import VENV_BIN
from node.client import NodeClient
from test_control_nodes import code_of, image_file, make_cloud, start_node, vm_types, wait_for

from controltest import register_image, wait_image

CORES = 12


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = make_cloud(tmp_path_factory.mktemp("instances"))
    env["node"] = start_node(env["root"], env["cloud"], "node-1", cores=CORES, memory_mib=8192,
                             extra=["--cache-limit", "6M"])
    env["secret"] = (env["cloud"].control_dir / "service.secret").read_text().strip()
    yield env
    env["node"].stop()
    env["cloud"].stop()


def node_call(env, method: str, *args):
    import asyncio

    async def call():
        async with NodeClient(env["node"].url, env["secret"]) as client:
            return await getattr(client, method)(*args)
    return asyncio.run(call())


def states(ec2, ids) -> dict[str, str]:
    found = ec2.describe_instances(InstanceIds=list(ids))["Reservations"]
    return {i["InstanceId"]: i["State"]["Name"] for r in found for i in r["Instances"]}


def wait_state(ec2, ids, state: str, timeout: float = 30) -> None:
    wait_for(lambda: set(states(ec2, ids).values()) == {state}, timeout=timeout, what=f"{ids} {state}")


def terminate_all(ec2, ids) -> None:
    ec2.terminate_instances(InstanceIds=list(ids))
    wait_state(ec2, ids, "terminated")


def test_run_describe_terminate_through_the_node(env):
    ec2 = env["ec2_a"]
    key = ec2.create_key_pair(KeyName="run-key")
    group = ec2.create_security_group(GroupName="web", Description="web")["GroupId"]
    made = ec2.run_instances(ImageId=env["image_id"], MinCount=2, MaxCount=2, InstanceType="m1.small",
                             KeyName="run-key", SecurityGroups=["web"], UserData="#!/bin/sh\necho hi\n",
                             TagSpecifications=[{"ResourceType": "instance",
                                                 "Tags": [{"Key": "Name", "Value": "first"}]}])
    ids = [i["InstanceId"] for i in made["Instances"]]
    assert made["ReservationId"].startswith("r-") and len(ids) == 2
    assert all(len(i) == 19 and i.startswith("i-") for i in ids)
    assert {i["State"]["Name"] for i in made["Instances"]} == {"pending"}
    assert [i["AmiLaunchIndex"] for i in made["Instances"]] == [0, 1]
    wait_state(ec2, ids, "running")

    (reservation,) = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    assert reservation["ReservationId"] == made["ReservationId"]
    first = reservation["Instances"][0]
    assert first["ImageId"] == env["image_id"] and first["InstanceType"] == "m1.small"
    assert first["KeyName"] == "run-key" and first["State"] == {"Code": 16, "Name": "running"}
    assert first["Placement"]["AvailabilityZone"] == "eucalyptusa"
    assert first["SecurityGroups"] == [{"GroupId": group, "GroupName": "web"}]
    assert first["Tags"] == [{"Key": "Name", "Value": "first"}]
    assert first["PrivateIpAddress"].startswith("10.211.0.") and first["PrivateIpAddress"] != "10.211.0.1"
    assert first["RootDeviceType"] == "instance-store"
    assert len({i["PrivateIpAddress"] for i in reservation["Instances"]}) == 2

    # The node runs them, with the launch body control sent.
    on_node = {d["instance_id"]: d for d in node_call(env, "instances")}
    assert on_node[ids[0]]["state"] == "running" and on_node[ids[0]]["vcpus"] == 1
    doc = on_node[ids[0]]
    if "metadata" in doc:  # the node keeps it (node side of the protocol)
        meta = doc["metadata"]
        assert meta["instance-id"] == ids[0] and meta["reservation-id"] == made["ReservationId"]
        assert meta["local-ipv4"] == first["PrivateIpAddress"]
        assert meta["public-keys"]["run-key"].startswith("ssh-rsa ")
        assert meta["placement/availability-zone"] == "eucalyptusa" and meta["security-groups"] == ["web"]
    if "user_data" in doc:
        assert base64.b64decode(doc["user_data"]) == b"#!/bin/sh\necho hi\n"
    assert key["KeyName"] == "run-key"

    status = ec2.describe_instance_status(InstanceIds=ids)["InstanceStatuses"]
    assert {s["InstanceStatus"]["Status"] for s in status} == {"ok"}
    assert ec2.reboot_instances(InstanceIds=ids[:1])["ResponseMetadata"]["HTTPStatusCode"] == 200
    out = ec2.get_console_output(InstanceId=ids[0])
    assert out["InstanceId"] == ids[0]

    for call in (ec2.stop_instances, ec2.start_instances):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call(InstanceIds=ids[:1])
        assert code_of(e) == "UnsupportedOperation" and "'ebs' root device" in str(e.value)

    changed = ec2.terminate_instances(InstanceIds=ids)["TerminatingInstances"]
    assert {c["PreviousState"]["Name"] for c in changed} == {"running"}
    assert {c["CurrentState"]["Name"] for c in changed} == {"shutting-down"}
    wait_state(ec2, ids, "terminated")
    assert not {d["instance_id"] for d in node_call(env, "instances")} & set(ids)
    gone = ec2.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"][0]
    assert gone["StateReason"]["Code"] == "Client.UserInitiatedShutdown"
    assert ec2.terminate_instances(InstanceIds=ids[:1])["TerminatingInstances"][0]["CurrentState"]["Name"] == \
        "terminated"
    # Terminated instances no longer count against the node's capacity.
    assert vm_types(ec2)["m1.small"][0] == CORES


def test_client_token_is_idempotent(env):
    ec2 = env["ec2_a"]
    first = ec2.run_instances(ImageId=env["image_id"], MinCount=1, MaxCount=1, ClientToken="token-1")
    again = ec2.run_instances(ImageId=env["image_id"], MinCount=1, MaxCount=1, ClientToken="token-1")
    assert again["ReservationId"] == first["ReservationId"]
    assert [i["InstanceId"] for i in again["Instances"]] == [i["InstanceId"] for i in first["Instances"]]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.run_instances(ImageId=env["image_id"], MinCount=2, MaxCount=2, ClientToken="token-1")
    assert code_of(e) == "IdempotentParameterMismatch"
    # The same token in another account is another request.
    other = env["ec2_b"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        other.run_instances(ImageId=env["image_id"], MinCount=1, MaxCount=1, ClientToken="token-1")
    assert code_of(e) == "InvalidAMIID.NotFound"  # and A's private image is invisible to B
    terminate_all(ec2, [i["InstanceId"] for i in first["Instances"]])


def test_capacity_is_checked_before_acknowledging(env):
    ec2 = env["ec2_a"]
    before = ec2.describe_instances()["Reservations"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.run_instances(ImageId=env["image_id"], MinCount=CORES + 1, MaxCount=CORES + 1)
    assert code_of(e) == "InsufficientInstanceCapacity"
    assert ec2.describe_instances()["Reservations"] == before
    # MaxCount beyond capacity launches as many as fit.
    made = ec2.run_instances(ImageId=env["image_id"], MinCount=1, MaxCount=CORES + 5, InstanceType="t1.micro")
    assert len(made["Instances"]) == CORES
    assert vm_types(ec2)["t1.micro"][0] == 0
    terminate_all(ec2, [i["InstanceId"] for i in made["Instances"]])


def test_bad_requests_change_nothing(env):
    ec2 = env["ec2_a"]
    cases = [
        (dict(ImageId="emi-00000000"), "InvalidAMIID.NotFound"),
        (dict(ImageId="not-an-image"), "InvalidAMIID.Malformed"),
        (dict(ImageId=env["image_id"], InstanceType="m9.huge"), "InvalidParameterValue"),
        (dict(ImageId=env["image_id"], KeyName="no-such-key"), "InvalidKeyPair.NotFound"),
        (dict(ImageId=env["image_id"], SecurityGroups=["no-such-group"]), "InvalidGroup.NotFound"),
        (dict(ImageId=env["image_id"], Placement={"AvailabilityZone": "elsewhere"}), "InvalidParameterValue"),
        (dict(ImageId=env["image_id"], KernelId="eki-00000000"), "InvalidAMIID.NotFound"),
    ]
    before = ec2.describe_instances()["Reservations"]
    for kwargs, code in cases:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.run_instances(MinCount=1, MaxCount=1, **kwargs)
        assert code_of(e) == code, kwargs
    assert ec2.describe_instances()["Reservations"] == before
    for ids, code in ((["i-00000000"], "InvalidInstanceID.NotFound"), (["i-xyz"], "InvalidInstanceID.Malformed")):
        for call in (ec2.describe_instances, ec2.terminate_instances, ec2.describe_instance_status):
            with pytest.raises(botocore.exceptions.ClientError) as e:
                call(InstanceIds=ids)
            assert code_of(e) == code


def test_filters_and_pagination(env):
    ec2 = env["ec2_a"]
    ec2.create_key_pair(KeyName="filter-key")
    web = ec2.run_instances(ImageId=env["image_id"], MinCount=3, MaxCount=3, KeyName="filter-key",
                            TagSpecifications=[{"ResourceType": "instance",
                                                "Tags": [{"Key": "role", "Value": "web"}]}])
    db = ec2.run_instances(ImageId=env["image_id"], MinCount=3, MaxCount=3, InstanceType="c1.medium",
                           TagSpecifications=[{"ResourceType": "instance",
                                               "Tags": [{"Key": "role", "Value": "db"}, {"Key": "tier",
                                                                                        "Value": "back"}]}])
    web_ids = [i["InstanceId"] for i in web["Instances"]]
    db_ids = [i["InstanceId"] for i in db["Instances"]]
    mine = set(web_ids + db_ids)

    def found(*filters) -> set[str]:
        reservations = ec2.describe_instances(Filters=[{"Name": n, "Values": v} for n, v in filters])["Reservations"]
        return {i["InstanceId"] for r in reservations for i in r["Instances"]} & mine

    assert found(("tag:role", ["web"])) == set(web_ids)
    assert found(("tag:role", ["w*", "d?"])) == mine
    assert found(("tag-key", ["tier"])) == set(db_ids)
    assert found(("instance-type", ["c1.medium"])) == set(db_ids)
    assert found(("key-name", ["filter-*"])) == set(web_ids)
    assert found(("reservation-id", [db["ReservationId"]])) == set(db_ids)
    assert found(("instance-id", [web_ids[0]])) == {web_ids[0]}
    assert found(("image-id", [env["image_id"]]), ("availability-zone", ["eucalyptus*"])) == mine
    ip = web["Instances"][1]["PrivateIpAddress"]
    assert found(("private-ip-address", [ip])) == {web_ids[1]}
    assert found(("private-ip-address", ["10.211.0.*"])) == mine
    assert found(("ip-address", ["*"])) == set()
    wait_state(ec2, web_ids + db_ids, "running")
    assert found(("instance-state-name", ["running"]), ("tag:role", ["db"])) == set(db_ids)
    assert found(("instance-state-name", ["pending"])) == set()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_instances(Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
    assert code_of(e) == "InvalidParameterValue"

    pages, token = [], None
    while True:
        kwargs = {"MaxResults": 5, **({"NextToken": token} if token else {})}
        page = ec2.describe_instances(**kwargs)
        pages.append([i["InstanceId"] for r in page["Reservations"] for i in r["Instances"]])
        token = page.get("NextToken")
        if not token:
            break
    flat = [i for p in pages for i in p]
    assert all(len(p) <= 5 for p in pages) and len(pages) >= 2
    assert len(flat) == len(set(flat)) and mine <= set(flat)
    paginated = {i["InstanceId"] for p in ec2.get_paginator("describe_instances").paginate(
        PaginationConfig={"PageSize": 5}) for r in p["Reservations"] for i in r["Instances"]}
    assert set(flat) == paginated
    terminate_all(ec2, list(mine))


def test_kernel_ramdisk_group_id_and_zone(env):
    ec2, root = env["ec2_a"], env["root"]
    kernel = register_image(ec2, env["env_a"], image_file(root / "vmlinuz", 200_000, 11), root / "bundle-k",
                            "acme-boot", kind="kernel", name="kernel")
    ramdisk = register_image(ec2, env["env_a"], image_file(root / "initrd", 100_000, 12), root / "bundle-r",
                             "acme-boot", kind="ramdisk", name="ramdisk")
    group = ec2.create_security_group(GroupName="kr", Description="kr")["GroupId"]
    made = ec2.run_instances(ImageId=env["image_id"], MinCount=1, MaxCount=1, KernelId=kernel, RamdiskId=ramdisk,
                             SecurityGroupIds=[group], Placement={"AvailabilityZone": "eucalyptusa"})
    instance = made["Instances"][0]
    assert (instance["KernelId"], instance["RamdiskId"]) == (kernel, ramdisk)
    assert instance["SecurityGroups"] == [{"GroupId": group, "GroupName": "kr"}]
    wait_state(ec2, [instance["InstanceId"]], "running")
    doc = next(d for d in node_call(env, "instances") if d["instance_id"] == instance["InstanceId"])
    assert doc["images"] == {"machine": env["image_id"], "kernel": kernel, "ramdisk": ramdisk}
    found = ec2.describe_instances(Filters=[{"Name": "kernel-id", "Values": [kernel]},
                                            {"Name": "group-id", "Values": [group]}])["Reservations"]
    assert [i["InstanceId"] for r in found for i in r["Instances"]] == [instance["InstanceId"]]
    for kwargs, code in ((dict(RamdiskId=ramdisk), "InvalidParameterCombination"),
                         (dict(KernelId=ramdisk), "InvalidParameterValue"),
                         (dict(ImageId=kernel), "InvalidParameterValue")):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.run_instances(**{"ImageId": env["image_id"], "MinCount": 1, "MaxCount": 1, **kwargs})
        assert code_of(e) == code, kwargs
    terminate_all(ec2, [instance["InstanceId"]])


def test_accounts_are_kept_apart(env):
    a, b = env["ec2_a"], env["ec2_b"]
    made = a.run_instances(ImageId=env["image_id"], MinCount=1, MaxCount=1)
    instance_id = made["Instances"][0]["InstanceId"]
    assert not [i for r in b.describe_instances()["Reservations"] for i in r["Instances"]
                if i["InstanceId"] == instance_id]
    for call in (b.describe_instances, b.terminate_instances, b.reboot_instances, b.describe_instance_status):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call(InstanceIds=[instance_id])
        assert code_of(e) == "InvalidInstanceID.NotFound"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        b.create_tags(Resources=[instance_id], Tags=[{"Key": "mine", "Value": "no"}])
    assert code_of(e) == "InvalidInstanceID.NotFound"
    a.create_tags(Resources=[instance_id], Tags=[{"Key": "owner", "Value": "a"}])
    assert a.describe_instances(Filters=[{"Name": "tag:owner", "Values": ["a"]}])["Reservations"]
    assert states(a, [instance_id])[instance_id] in ("pending", "running")
    terminate_all(a, [instance_id])


def test_instance_gone_from_node_is_terminated_with_reason(env):
    ec2 = env["ec2_a"]
    instance_id = ec2.run_instances(ImageId=env["image_id"], MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_state(ec2, [instance_id], "running")
    node_call(env, "terminate", instance_id)  # behind control's back
    wait_state(ec2, [instance_id], "terminated")
    reason = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["StateReason"]
    assert reason["Code"] == "Server.InternalError" and "no longer on its node" in reason["Message"]


def test_failed_launch_is_terminated_with_the_nodes_reason(env):
    ec2 = env["ec2_a"]
    root = env["root"]
    # 8 MiB of random data cannot fit the node's 6 MiB cache: the node refuses the launch.
    big = register_image(ec2, env["env_a"], image_file(root / "big.img", 16 << 20, 9), root / "bundle-big",
                         "acme-images", name="too big", wait=False)
    try:  # still being prepared (16 MiB take a moment): not launchable yet
        ec2.run_instances(ImageId=big, MinCount=1, MaxCount=1)
        raise AssertionError("an image that is not available was launched")
    except botocore.exceptions.ClientError as exc:
        assert exc.response["Error"]["Code"] == "InvalidAMIID.Unavailable"
    assert wait_image(ec2, big)["State"] == "available"
    instance_id = ec2.run_instances(ImageId=big, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_state(ec2, [instance_id], "terminated", timeout=60)
    reason = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["StateReason"]
    assert reason["Code"] == "Server.InternalError" and reason["Message"].startswith("Server.InternalError: ")
    assert vm_types(ec2)["m1.small"][0] == CORES


def test_unreachable_node_shows_impaired_then_reconciles(env):
    ec2 = env["ec2_a"]
    instance_id = ec2.run_instances(ImageId=env["image_id"], MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_state(ec2, [instance_id], "running")
    node = env["node"]
    os.kill(node.process.pid, signal.SIGSTOP)
    try:
        def impaired():
            (s,) = ec2.describe_instance_status(InstanceIds=[instance_id])["InstanceStatuses"]
            return s if s["SystemStatus"]["Status"] == "impaired" else None
        status = wait_for(impaired, timeout=10, what="impaired")
        assert status["InstanceStatus"]["Status"] == "impaired"
        assert status["InstanceState"]["Name"] == "running"  # keeps its state
        assert "unreachable" in status["Events"][0]["Description"]
        assert status["SystemStatus"]["Details"][0] == {"Name": "reachability", "Status": "failed",
                                                        "ImpairedSince": status["SystemStatus"]["Details"][0][
                                                            "ImpairedSince"]}
    finally:
        os.kill(node.process.pid, signal.SIGCONT)

    def healthy():
        (s,) = ec2.describe_instance_status(InstanceIds=[instance_id])["InstanceStatuses"]
        return s["SystemStatus"]["Status"] == "ok"
    wait_for(healthy, timeout=10, what="ok again")
    all_status = ec2.describe_instance_status(IncludeAllInstances=True)["InstanceStatuses"]
    assert any(s["InstanceState"]["Name"] == "terminated" for s in all_status)
    assert all(s["InstanceState"]["Name"] == "running"
               for s in ec2.describe_instance_status()["InstanceStatuses"])
    terminate_all(ec2, [instance_id])


def test_aws_cli(env):
    cloud = env["cloud"]
    run_env = {**os.environ, "AWS_ACCESS_KEY_ID": env["a"].access_key,
               "AWS_SECRET_ACCESS_KEY": env["a"].secret_key, "AWS_DEFAULT_REGION": "eucalyptus"}
    run_env.pop("AWS_PROFILE", None)

    def aws(*args) -> dict:
        out = subprocess.run([str(VENV_BIN / "aws"), "--endpoint-url", cloud.control.url, "--output", "json",
                              "ec2", *args], env=run_env, capture_output=True, text=True, timeout=60, check=True)
        return json.loads(out.stdout) if out.stdout.strip() else {}

    made = aws("run-instances", "--image-id", env["image_id"], "--count", "1", "--instance-type", "m1.small")
    instance_id = made["Instances"][0]["InstanceId"]
    wait_state(env["ec2_a"], [instance_id], "running")
    described = aws("describe-instances", "--instance-ids", instance_id)
    assert described["Reservations"][0]["Instances"][0]["State"]["Name"] == "running"
    zones = aws("describe-availability-zones", "--zone-names", "verbose")["AvailabilityZones"]
    assert any(z["ZoneName"] == "|- m1.small" for z in zones)
    aws("terminate-instances", "--instance-ids", instance_id)
    wait_state(env["ec2_a"], [instance_id], "terminated")



# ---- durability -------------------------------------------------------------------------------

def test_kill_during_run_instances_storm_loses_nothing_acknowledged(tmp_path):
    import threading

    import urllib3.exceptions

    from controltest import ec2_client, start_control

    env = make_cloud(tmp_path, control_extra=["--terminated-retention", "2"])
    cloud = env["cloud"]
    node = start_node(tmp_path, cloud, "node-storm", cores=32, memory_mib=16384)
    try:
        acked: list[str] = []
        lock = threading.Lock()
        go = threading.Event()

        def worker(n: int) -> None:
            client = ec2_client(cloud.control.url, env["a"], connect_timeout=2, read_timeout=10)
            go.wait()
            try:
                made = client.run_instances(ImageId=env["image_id"], MinCount=1, MaxCount=1,
                                            TagSpecifications=[{"ResourceType": "instance",
                                                                "Tags": [{"Key": "n", "Value": str(n)}]}])
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
                    urllib3.exceptions.HTTPError, OSError):
                return
            with lock:
                acked.append(made["Instances"][0]["InstanceId"])

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
        for t in threads:
            t.start()
        go.set()
        wait_for(lambda: len(acked) >= 8, timeout=30, interval=0.005, what="8 acknowledged launches")
        cloud.control.kill()  # SIGKILL with launches committed, in flight, and unanswered
        for t in threads:
            t.join(30)
        assert acked

        cloud.control = start_control(cloud.control_dir, port=cloud.control.port,
                                      extra=["--walrus", cloud.walrus.url, "--heartbeat-interval", "0.5",
                                             "--terminated-retention", "2"])
        ec2 = ec2_client(cloud.control.url, env["a"])
        present = {i["InstanceId"]: i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
        assert set(acked) <= set(present)
        wait_state(ec2, list(present), "running", timeout=60)
        # Each instance control knows runs on the node exactly once.
        on_node = [d["instance_id"] for d in node_call({"node": node, "secret": env_secret(cloud)}, "instances")
                   if d["state"] == "running"]
        assert sorted(on_node) == sorted(present)

        terminate_all(ec2, list(present))
        time.sleep(2.5)
        wait_for(lambda: not ec2.describe_instances()["Reservations"], timeout=10, what="purge")
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.describe_instances(InstanceIds=acked[:1])
        assert code_of(e) == "InvalidInstanceID.NotFound"
    finally:
        node.stop()
        cloud.stop()


def env_secret(cloud) -> str:
    return (cloud.control_dir / "service.secret").read_text().strip()
