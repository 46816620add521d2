"""Elastic IPs of a real control with a --public-ips pool, associated with instances
running on a real node; two accounts kept apart; the empty-pool default."""

from __future__ import annotations

import botocore.exceptions
import pytest

from control.api.addresses import parse_pool
from controltest import create_user, ec2_client, start_control
from test_control_nodes import code_of, make_cloud, start_node, wait_for

POOL = "198.51.100.10-198.51.100.12,203.0.113.8/31"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = make_cloud(tmp_path_factory.mktemp("addresses"), control_extra=["--public-ips", POOL])
    env["node"] = start_node(env["root"], env["cloud"], "node-1", cores=4, memory_mib=4096)
    yield env
    env["node"].stop()
    env["cloud"].stop()


def _instance(ec2, image_id: str) -> str:
    instance_id = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]

    def running():
        r = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        return r["State"]["Name"] == "running"
    wait_for(running, what="running")
    return instance_id


def _public_ip(ec2, instance_id: str):
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0].get("PublicIpAddress")


def test_parse_pool_ranges_and_cidrs():
    assert parse_pool(POOL) == ["198.51.100.10", "198.51.100.11", "198.51.100.12", "203.0.113.8", "203.0.113.9"]
    assert parse_pool(["10.0.0.0/30", "10.0.0.1"]) == ["10.0.0.1", "10.0.0.2"]
    for bad in ("10.0.0.5-10.0.0.1", "10.0.0.300", "10.0.0.0/8"):
        with pytest.raises(ValueError):
            parse_pool(bad)


def test_allocate_associate_disassociate_release(env):
    ec2, image_id = env["ec2_a"], env["image_id"]
    vpc = ec2.allocate_address(Domain="vpc")
    assert vpc["Domain"] == "vpc" and vpc["AllocationId"].startswith("eipalloc-")
    assert vpc["PublicIp"] in parse_pool(POOL)
    standard = ec2.allocate_address()
    assert standard["Domain"] == "standard" and standard["PublicIp"] != vpc["PublicIp"]
    first, second = _instance(ec2, image_id), _instance(ec2, image_id)

    association = ec2.associate_address(AllocationId=vpc["AllocationId"], InstanceId=first)["AssociationId"]
    assert association.startswith("eipassoc-")
    assert _public_ip(ec2, first) == vpc["PublicIp"]
    (described,) = ec2.describe_addresses(AllocationIds=[vpc["AllocationId"]])["Addresses"]
    assert described["InstanceId"] == first and described["AssociationId"] == association
    assert described["PrivateIpAddress"].startswith("10.211.0.")
    # A vpc address moves to another instance only with AllowReassociation.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.associate_address(AllocationId=vpc["AllocationId"], InstanceId=second)
    assert code_of(e) == "Resource.AlreadyAssociated"
    ec2.associate_address(AllocationId=vpc["AllocationId"], InstanceId=second, AllowReassociation=True)
    assert _public_ip(ec2, first) is None and _public_ip(ec2, second) == vpc["PublicIp"]
    # A vpc address in use cannot be released; a standard one is disassociated by release.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.release_address(AllocationId=vpc["AllocationId"])
    assert code_of(e) == "InvalidIPAddress.InUse"
    ec2.associate_address(PublicIp=standard["PublicIp"], InstanceId=first)
    assert _public_ip(ec2, first) == standard["PublicIp"]

    flt = ec2.describe_addresses(Filters=[{"Name": "instance-id", "Values": [second]}])["Addresses"]
    assert [a["PublicIp"] for a in flt] == [vpc["PublicIp"]]
    flt = ec2.describe_addresses(Filters=[{"Name": "domain", "Values": ["standard"]}])["Addresses"]
    assert [a["PublicIp"] for a in flt] == [standard["PublicIp"]]
    by_ip = ec2.describe_instances(Filters=[{"Name": "ip-address", "Values": [standard["PublicIp"]]}])
    assert [i["InstanceId"] for r in by_ip["Reservations"] for i in r["Instances"]] == [first]

    ec2.disassociate_address(AssociationId=ec2.describe_addresses(AllocationIds=[vpc["AllocationId"]])[
        "Addresses"][0]["AssociationId"])
    assert _public_ip(ec2, second) is None
    ec2.release_address(AllocationId=vpc["AllocationId"])
    ec2.release_address(PublicIp=standard["PublicIp"])
    assert _public_ip(ec2, first) is None
    assert ec2.describe_addresses()["Addresses"] == []
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_addresses(AllocationIds=[vpc["AllocationId"]])
    assert code_of(e) == "InvalidAllocationID.NotFound"
    ec2.terminate_instances(InstanceIds=[first, second])


def test_terminating_an_instance_frees_its_address(env):
    ec2 = env["ec2_a"]
    address = ec2.allocate_address(Domain="vpc")
    instance_id = _instance(ec2, env["image_id"])
    ec2.associate_address(AllocationId=address["AllocationId"], InstanceId=instance_id)
    ec2.terminate_instances(InstanceIds=[instance_id])
    wait_for(lambda: "InstanceId" not in ec2.describe_addresses(AllocationIds=[address["AllocationId"]])[
        "Addresses"][0], what="address freed")
    ec2.release_address(AllocationId=address["AllocationId"])


def test_pool_exhaustion_and_accounts_apart(env):
    a, b = env["ec2_a"], env["ec2_b"]
    mine = a.allocate_address(Domain="vpc")
    a.create_tags(Resources=[mine["AllocationId"]], Tags=[{"Key": "use", "Value": "web"}])
    assert [x["PublicIp"] for x in a.describe_addresses(Filters=[{"Name": "tag:use", "Values": ["web"]}])[
        "Addresses"]] == [mine["PublicIp"]]
    assert b.describe_addresses()["Addresses"] == []
    for call, kwargs, code in ((b.release_address, {"AllocationId": mine["AllocationId"]},
                                "InvalidAllocationID.NotFound"),
                               (b.release_address, {"PublicIp": mine["PublicIp"]}, "InvalidAddress.NotFound"),
                               (b.describe_addresses, {"PublicIps": [mine["PublicIp"]]}, "InvalidAddress.NotFound")):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call(**kwargs)
        assert code_of(e) == code
    # B cannot point A's address at its own instance, nor its own address at A's instance.
    theirs = b.allocate_address(Domain="vpc")
    instance_id = a.run_instances(ImageId=env["image_id"], MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        b.associate_address(AllocationId=theirs["AllocationId"], InstanceId=instance_id)
    assert code_of(e) == "InvalidInstanceID.NotFound"
    a.terminate_instances(InstanceIds=[instance_id])
    held = [mine, theirs]
    while True:
        try:
            held.append(a.allocate_address(Domain="vpc"))
        except botocore.exceptions.ClientError as exc:
            assert exc.response["Error"]["Code"] == "AddressLimitExceeded"
            break
    assert len(held) == len(parse_pool(POOL))
    for address in held[:1] + held[2:]:
        a.release_address(AllocationId=address["AllocationId"])
    b.release_address(AllocationId=theirs["AllocationId"])


def test_no_pool_means_address_limit_exceeded(tmp_path):
    data = tmp_path / "control"
    keys = create_user(data, "acme", "alice")
    server = start_control(data)
    try:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2_client(server.url, keys).allocate_address(Domain="vpc")
        assert code_of(e) == "AddressLimitExceeded"
    finally:
        server.stop()
