"""The EC2 API of a real control process, driven with boto3: key pairs, security groups,
tags, the cloud's description, authentication and errors, two accounts kept apart."""

from __future__ import annotations

import datetime
import hashlib
import urllib.request

import botocore.exceptions
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from controltest import Keys, create_user, ec2_client, start_control


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    data = tmp_path_factory.mktemp("control") / "data"
    alice = create_user(data, "alpha", "alice")
    bob = create_user(data, "beta", "bob")
    server = start_control(data)
    yield server, alice, bob
    server.stop()


@pytest.fixture(scope="module")
def alice(cloud):
    return ec2_client(cloud[0].url, cloud[1])


@pytest.fixture(scope="module")
def bob(cloud):
    return ec2_client(cloud[0].url, cloud[2])


def code_of(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def status_of(excinfo) -> int:
    return excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"]


# ---- key pairs -------------------------------------------------------------------------------

def test_create_key_pair_returns_working_key_and_aws_fingerprint(alice):
    made = alice.create_key_pair(KeyName="kp-create")
    key = serialization.load_pem_private_key(made["KeyMaterial"].encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    assert made["KeyFingerprint"] == ":".join(f"{b:02x}" for b in hashlib.sha1(der).digest())
    assert made["KeyPairId"].startswith("key-")
    listed = alice.describe_key_pairs(KeyNames=["kp-create"])["KeyPairs"]
    assert [(k["KeyName"], k["KeyFingerprint"], k["KeyPairId"]) for k in listed] == \
        [("kp-create", made["KeyFingerprint"], made["KeyPairId"])]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.create_key_pair(KeyName="kp-create")
    assert code_of(e) == "InvalidKeyPair.Duplicate"


def test_import_key_pair_md5_fingerprint(alice):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    openssh = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    made = alice.import_key_pair(KeyName="kp-import", PublicKeyMaterial=openssh + b" me@host")
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert made["KeyFingerprint"] == ":".join(f"{b:02x}" for b in hashlib.md5(der).digest())
    described = alice.describe_key_pairs(KeyPairIds=[made["KeyPairId"]], IncludePublicKey=True)["KeyPairs"]
    assert described[0]["PublicKey"].split()[:2] == openssh.decode().split()[:2]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.import_key_pair(KeyName="kp-bad", PublicKeyMaterial=b"ssh-rsa not-a-key")
    assert code_of(e) == "InvalidKey.Format"


def test_describe_key_pairs_filters_and_not_found(alice):
    alice.create_key_pair(KeyName="kp-filter-a")
    alice.create_key_pair(KeyName="kp-filter-b")
    found = alice.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["kp-filter-*"]}])["KeyPairs"]
    assert sorted(k["KeyName"] for k in found) == ["kp-filter-a", "kp-filter-b"]
    fp = found[0]["KeyFingerprint"]
    by_fp = alice.describe_key_pairs(Filters=[{"Name": "fingerprint", "Values": [fp]}])["KeyPairs"]
    assert [k["KeyFingerprint"] for k in by_fp] == [fp]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.describe_key_pairs(KeyNames=["kp-nope"])
    assert code_of(e) == "InvalidKeyPair.NotFound"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.describe_key_pairs(Filters=[{"Name": "bogus", "Values": ["x"]}])
    assert code_of(e) == "InvalidParameterValue"


def test_delete_key_pair_is_idempotent(alice):
    made = alice.create_key_pair(KeyName="kp-delete")
    alice.delete_key_pair(KeyName="kp-delete")
    alice.delete_key_pair(KeyName="kp-delete")  # as AWS: no error
    alice.delete_key_pair(KeyPairId=made["KeyPairId"])
    assert not alice.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["kp-delete"]}])["KeyPairs"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.create_key_pair(KeyName="")
    assert code_of(e) == "MissingParameter"


# ---- security groups -------------------------------------------------------------------------

def test_default_group_exists_and_cannot_be_deleted(bob):
    groups = bob.describe_security_groups(GroupNames=["default"])["SecurityGroups"]
    assert len(groups) == 1 and groups[0]["GroupName"] == "default"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bob.delete_security_group(GroupName="default")
    assert code_of(e) == "CannotDelete"


def test_security_group_lifecycle_and_rules(alice):
    gid = alice.create_security_group(GroupName="web", Description="web servers")["GroupId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.create_security_group(GroupName="web", Description="again")
    assert code_of(e) == "InvalidGroup.Duplicate"
    alice.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "ssh"}]},
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "icmp", "FromPort": 8, "ToPort": -1, "IpRanges": [{"CidrIp": "192.168.0.0/16"}]},
    ])
    # The old flat parameters, by group name, with a source group.
    alice.authorize_security_group_ingress(GroupName="web", SourceSecurityGroupName="default")
    alice.authorize_security_group_ingress(GroupName="web", IpProtocol="udp", FromPort=53, ToPort=53,
                                           CidrIp="172.16.0.0/12")
    group = alice.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
    perms = {(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")): p for p in group["IpPermissions"]}
    assert perms[("tcp", 22, 22)]["IpRanges"] == [{"CidrIp": "10.0.0.0/8", "Description": "ssh"}]
    assert perms[("icmp", 8, -1)]["IpRanges"] == [{"CidrIp": "192.168.0.0/16"}]
    assert perms[("udp", 53, 53)]["IpRanges"] == [{"CidrIp": "172.16.0.0/12"}]
    assert perms[("-1", None, None)]["UserIdGroupPairs"][0]["GroupName"] == "default"
    assert group["IpPermissionsEgress"][0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]

    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.authorize_security_group_ingress(GroupId=gid, IpProtocol="tcp", FromPort=22, ToPort=22,
                                               CidrIp="10.0.0.0/8")
    assert code_of(e) == "InvalidPermission.Duplicate"
    for bad in ({"IpProtocol": "tcp", "FromPort": 10, "ToPort": 5, "CidrIp": "1.2.3.0/24"},
                {"IpProtocol": "tcp", "FromPort": 1, "ToPort": 70000, "CidrIp": "1.2.3.0/24"},
                {"IpProtocol": "bogus", "FromPort": 1, "ToPort": 2, "CidrIp": "1.2.3.0/24"},
                {"IpProtocol": "tcp", "FromPort": 1, "ToPort": 2, "CidrIp": "1.2.3.4/24"}):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            alice.authorize_security_group_ingress(GroupId=gid, **bad)
        assert code_of(e) == "InvalidParameterValue", bad

    alice.revoke_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.revoke_security_group_ingress(GroupId=gid, IpProtocol="tcp", FromPort=22, ToPort=22,
                                            CidrIp="10.0.0.0/8")
    assert code_of(e) == "InvalidPermission.NotFound"

    alice.revoke_security_group_egress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    alice.authorize_security_group_egress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    group = alice.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
    assert [(p["IpProtocol"], p["FromPort"]) for p in group["IpPermissionsEgress"]] == [("tcp", 443)]

    found = alice.describe_security_groups(
        Filters=[{"Name": "ip-permission.cidr", "Values": ["172.16.*"]}])["SecurityGroups"]
    assert [g["GroupId"] for g in found] == [gid]
    found = alice.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["w?b"]}])["SecurityGroups"]
    assert [g["GroupId"] for g in found] == [gid]

    alice.delete_security_group(GroupId=gid)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.describe_security_groups(GroupIds=[gid])
    assert code_of(e) == "InvalidGroup.NotFound"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.delete_security_group(GroupName="web")
    assert code_of(e) == "InvalidGroup.NotFound"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.describe_security_groups(GroupIds=["sg-zz"])
    assert code_of(e) == "InvalidGroupId.Malformed"


def test_group_referenced_by_another_cannot_be_deleted(alice):
    src = alice.create_security_group(GroupName="src", Description="source")["GroupId"]
    dst = alice.create_security_group(GroupName="dst", Description="dest")["GroupId"]
    alice.authorize_security_group_ingress(GroupId=dst, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupId": src}]}])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.delete_security_group(GroupId=src)
    assert code_of(e) == "DependencyViolation"
    alice.delete_security_group(GroupId=dst)
    alice.delete_security_group(GroupId=src)


# ---- tags ------------------------------------------------------------------------------------

def test_tags_on_groups_and_key_pairs(alice):
    gid = alice.create_security_group(GroupName="tagged", Description="t")["GroupId"]
    kid = alice.create_key_pair(KeyName="kp-tagged")["KeyPairId"]
    alice.create_tags(Resources=[gid, kid], Tags=[{"Key": "env", "Value": "prod"}, {"Key": "team", "Value": "a"}])
    tags = alice.describe_tags(Filters=[{"Name": "resource-id", "Values": [gid, kid]}])["Tags"]
    assert sorted((t["ResourceType"], t["Key"], t["Value"]) for t in tags) == [
        ("key-pair", "env", "prod"), ("key-pair", "team", "a"),
        ("security-group", "env", "prod"), ("security-group", "team", "a")]
    only = alice.describe_tags(Filters=[{"Name": "resource-type", "Values": ["security-group"]},
                                        {"Name": "value", "Values": ["pr*"]}])["Tags"]
    assert [(t["ResourceId"], t["Key"]) for t in only] == [(gid, "env")]
    by_tag = alice.describe_security_groups(Filters=[{"Name": "tag:env", "Values": ["prod"]}])["SecurityGroups"]
    assert [g["GroupId"] for g in by_tag] == [gid]
    assert {t["Key"] for t in by_tag[0]["Tags"]} == {"env", "team"}
    kp = alice.describe_key_pairs(Filters=[{"Name": "tag-key", "Values": ["team"]}])["KeyPairs"]
    assert [k["KeyPairId"] for k in kp] == [kid]

    alice.delete_tags(Resources=[gid], Tags=[{"Key": "env", "Value": "wrong"}])  # value must match
    alice.delete_tags(Resources=[gid], Tags=[{"Key": "team"}])
    left = alice.describe_tags(Filters=[{"Name": "resource-id", "Values": [gid]}])["Tags"]
    assert [(t["Key"], t["Value"]) for t in left] == [("env", "prod")]

    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.create_tags(Resources=["sg-0123456789abcdef0"], Tags=[{"Key": "a", "Value": "b"}])
    assert code_of(e) == "InvalidGroup.NotFound"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.create_tags(Resources=["i-12345678"], Tags=[{"Key": "a", "Value": "b"}])
    assert code_of(e) == "InvalidInstanceID.NotFound"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.create_tags(Resources=["vol-12345678"], Tags=[{"Key": "a", "Value": "b"}])
    assert code_of(e) == "InvalidID"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.create_tags(Resources=[gid], Tags=[{"Key": "aws:x", "Value": "b"}])
    assert code_of(e) == "InvalidParameterValue"

    alice.delete_security_group(GroupId=gid)  # its tags go with it
    assert not alice.describe_tags(Filters=[{"Name": "resource-id", "Values": [gid]}])["Tags"]


def test_tag_specifications_on_create(alice):
    made = alice.create_security_group(GroupName="spec", Description="d", TagSpecifications=[
        {"ResourceType": "security-group", "Tags": [{"Key": "Name", "Value": "spec"}]}])
    tags = alice.describe_tags(Filters=[{"Name": "resource-id", "Values": [made["GroupId"]]}])["Tags"]
    assert [(t["Key"], t["Value"]) for t in tags] == [("Name", "spec")]


# ---- two accounts ----------------------------------------------------------------------------

def test_accounts_are_isolated(alice, bob):
    alice.create_key_pair(KeyName="kp-shared-name")
    bob.create_key_pair(KeyName="kp-shared-name")  # same name, other account: fine
    a_group = alice.create_security_group(GroupName="private", Description="alice's")["GroupId"]
    assert "private" not in [g["GroupName"] for g in bob.describe_security_groups()["SecurityGroups"]]
    assert all(k["KeyName"] != "kp-create" for k in bob.describe_key_pairs()["KeyPairs"])
    for call in (lambda: bob.describe_security_groups(GroupIds=[a_group]),
                 lambda: bob.delete_security_group(GroupId=a_group),
                 lambda: bob.authorize_security_group_ingress(GroupId=a_group, IpProtocol="tcp", FromPort=1,
                                                              ToPort=1, CidrIp="0.0.0.0/0"),
                 lambda: bob.create_tags(Resources=[a_group], Tags=[{"Key": "x", "Value": "y"}]),
                 lambda: bob.describe_key_pairs(KeyNames=["kp-import"])):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert code_of(e) in ("InvalidGroup.NotFound", "InvalidKeyPair.NotFound")
    # A rule naming another account's group by id alone does not find it.
    b_group = bob.create_security_group(GroupName="bobs", Description="b")["GroupId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bob.authorize_security_group_ingress(GroupId=b_group, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "UserIdGroupPairs": [{"GroupId": a_group}]}])
    assert code_of(e) == "InvalidGroup.NotFound"
    bob.delete_key_pair(KeyName="kp-import")  # idempotent, and alice's key survives
    assert alice.describe_key_pairs(KeyNames=["kp-import"])["KeyPairs"]
    assert not [t for t in bob.describe_tags()["Tags"] if t["ResourceId"] == a_group]
    owners = {g["OwnerId"] for g in alice.describe_security_groups()["SecurityGroups"]} | \
        {g["OwnerId"] for g in bob.describe_security_groups()["SecurityGroups"]}
    assert len(owners) == 2 and all(len(o) == 12 and o.isdigit() for o in owners)


# ---- the cloud -------------------------------------------------------------------------------

def test_regions_zones_instance_types_and_service_certificates(cloud, alice):
    server = cloud[0]
    regions = alice.describe_regions()["Regions"]
    assert regions == [{"RegionName": "eucalyptus", "Endpoint": server.url, "OptInStatus": "opt-in-not-required"}]
    zones = alice.describe_availability_zones()["AvailabilityZones"]
    assert [(z["ZoneName"], z["State"], z["RegionName"]) for z in zones] == [("eucalyptusa", "available", "eucalyptus")]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.describe_availability_zones(ZoneNames=["nowhere"])
    assert code_of(e) == "InvalidParameterValue"
    types = {t["InstanceType"]: t for t in alice.describe_instance_types()["InstanceTypes"]}
    assert {"m1.small", "c1.medium", "m1.large", "m1.xlarge", "c1.xlarge", "t2.micro"} <= set(types)
    assert types["c1.xlarge"]["VCpuInfo"]["DefaultVCpus"] == 2
    assert types["m1.small"]["MemoryInfo"]["SizeInMiB"] == 256
    one = alice.describe_instance_types(InstanceTypes=["t2.micro"])["InstanceTypes"]
    assert [t["InstanceType"] for t in one] == ["t2.micro"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alice.describe_instance_types(InstanceTypes=["x9.huge"])
    assert code_of(e) == "InvalidInstanceType"

    cert = (server.data_dir / "cloud-cert.pem").read_text()
    xml = signed_get(server.url, cloud[1], {"Action": "DescribeServiceCertificates", "Version": "eucalyptus"})
    assert "<certificateUsage>image-bundling</certificateUsage>" in xml
    assert cert.strip().splitlines()[1] in xml
    assert 'xmlns="http://ec2.amazonaws.com/doc/eucalyptus/"' in xml


def signed_get(url: str, keys: Keys, params: dict, *, region: str = "eucalyptus", path: str = "/") -> str:
    """A SigV4-signed GET made by hand (for actions botocore does not know)."""
    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="GET", url=url.rstrip("/") + path, params=params)
    SigV4QueryAuth(Credentials(keys.access_key, keys.secret_key), "ec2", region, expires=300).add_auth(request)
    prepared = request.prepare()
    try:
        with urllib.request.urlopen(prepared.url) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()


# ---- authentication and protocol -------------------------------------------------------------

def test_sigv2_and_foreign_region_and_old_paths(cloud):
    server, alice_keys, _ = cloud
    v2 = ec2_client(server.url, alice_keys, signature="v2")
    assert v2.describe_regions()["Regions"]
    v2.create_key_pair(KeyName="kp-sigv2")
    assert ec2_client(server.url, alice_keys, region="ap-southeast-7").describe_key_pairs(KeyNames=["kp-sigv2"])
    for path in ("services/compute/", "services/Eucalyptus/"):
        assert ec2_client(server.url + path, alice_keys).describe_regions()["Regions"]
    xml = signed_get(server.url, alice_keys, {"Action": "DescribeRegions", "Version": "2014-06-15"},
                     path="/services/compute/")
    assert 'xmlns="http://ec2.amazonaws.com/doc/2014-06-15/"' in xml and "<requestId>" in xml


def test_auth_failures(cloud):
    server, alice_keys, _ = cloud
    wrong = Keys("alpha", "alice", alice_keys.access_key, "not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2_client(server.url, wrong).describe_regions()
    assert (code_of(e), status_of(e)) == ("SignatureDoesNotMatch", 403)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2_client(server.url, wrong, signature="v2").describe_regions()
    assert code_of(e) == "SignatureDoesNotMatch"
    unknown = Keys("x", "x", "AKIANOSUCHKEY0000000", "x")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2_client(server.url, unknown).describe_regions()
    assert (code_of(e), status_of(e)) == ("AuthFailure", 401)

    stale = ec2_client(server.url, alice_keys)

    def backdate(request, **_):
        # Sign as of an hour ago: botocore reads the time from datetime at signing.
        import botocore.auth
        real = botocore.auth.datetime.datetime

        class Past(real):
            @classmethod
            def utcnow(cls):
                return real.utcnow() - datetime.timedelta(hours=1)

            @classmethod
            def now(cls, tz=None):
                return real.now(tz) - datetime.timedelta(hours=1)
        botocore.auth.datetime.datetime = Past
        request.context["restore"] = lambda: setattr(botocore.auth.datetime, "datetime", real)

    def restore(request, **_):
        request.context.pop("restore")()

    stale.meta.events.register_first("before-sign.ec2", backdate)
    stale.meta.events.register("request-created.ec2", restore)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        stale.describe_regions()
    assert code_of(e) == "RequestExpired"
    assert "15 minutes" in e.value.response["Error"]["Message"]


def test_unknown_and_missing_action(cloud):
    server, alice_keys, _ = cloud
    xml = signed_get(server.url, alice_keys, {"Action": "RunRocket", "Version": "2016-11-15"})
    assert "<Code>InvalidAction</Code>" in xml and "<RequestID>" in xml
    xml = signed_get(server.url, alice_keys, {"Version": "2016-11-15"})
    assert "<Code>MissingAction</Code>" in xml
    with _open(server.url + "?Action=DescribeRegions") as (status, body):
        assert status == 401 and b"<Code>MissingAuthenticationToken</Code>" in body


class _open:
    """GET a URL: (status, body), errors included."""

    def __init__(self, url):
        self.url = url

    def __enter__(self):
        try:
            with urllib.request.urlopen(self.url) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def __exit__(self, *exc):
        return False


def test_health_and_metrics(cloud, alice):
    server = cloud[0]
    alice.describe_regions()
    with _open(server.url + "_eucalypt/health") as (status, body):
        assert status == 200 and b'"ok"' in body
    with _open(server.url + "_eucalypt/metrics") as (status, body):
        text = body.decode()
    assert status == 200
    assert 'eucalypt_control_requests_total{action="DescribeRegions",status="200"}' in text
    assert "eucalypt_control_request_duration_seconds_bucket" in text
