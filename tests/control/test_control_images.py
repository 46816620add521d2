"""Images against a real control + Walrus: bundles made and uploaded with our euca2ools
commands, registered with boto3 and the aws cli, prepared by imagecache into Walrus."""

from __future__ import annotations

import datetime
import json
import subprocess

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from controltest import (VENV_BIN, Keys, bundle_and_upload, create_user, ec2_client, register_image,
                         start_cloud, start_control, user_environment, wait_image)


def _image(path, size: int, seed: int):
    import random
    rng = random.Random(seed)
    # Half random, half zeros: exercises zero chunks too.
    path.write_bytes(rng.randbytes(size // 2) + bytes(size - size // 2))
    return path


def _s3(env):
    return boto3.client("s3", endpoint_url=env["S3_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


def _keys(env, account, user) -> Keys:
    return Keys(account, user, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    cloud = start_cloud(root)
    a = create_user(cloud.control_dir, "acme", "alice")
    b = create_user(cloud.control_dir, "globex", "bob")
    env_a = user_environment(cloud.control_dir, "acme", "alice", root / "creds-a")
    env_b = user_environment(cloud.control_dir, "globex", "bob", root / "creds-b")
    yield {"cloud": cloud, "root": root, "a": a, "b": b, "env_a": env_a, "env_b": env_b,
           "ec2_a": ec2_client(cloud.control.url, a), "ec2_b": ec2_client(cloud.control.url, b)}
    cloud.stop()


def _code(exc) -> str:
    return exc.value.response["Error"]["Code"]


def test_kernel_ramdisk_machine_become_available(cloud):
    root, env, ec2 = cloud["root"], cloud["env_a"], cloud["ec2_a"]
    kernel = register_image(ec2, env, _image(root / "vmlinuz", 300_000, 1), root / "bk", "acme-boot",
                            kind="kernel", name="tiny kernel")
    ramdisk = register_image(ec2, env, _image(root / "initrd.img", 200_000, 2), root / "br", "acme-boot",
                             kind="ramdisk", name="tiny ramdisk")
    assert kernel.startswith("eki-") and ramdisk.startswith("eri-")
    machine = register_image(ec2, env, _image(root / "root.img", 3 << 20, 3), root / "bm", "acme-images",
                             name="tiny root", KernelId=kernel, RamdiskId=ramdisk, Description="a test image")
    assert machine.startswith("emi-")
    image = ec2.describe_images(ImageIds=[machine])["Images"][0]
    assert image["State"] == "available"
    assert image["ImageType"] == "machine" and image["KernelId"] == kernel and image["RamdiskId"] == ramdisk
    assert image["ImageLocation"] == "acme-images/root.img.manifest.xml"
    assert image["OwnerId"] == ec2.describe_security_groups()["SecurityGroups"][0]["OwnerId"]
    assert image["Public"] is False and image["RootDeviceType"] == "instance-store"
    assert image["Description"] == "a test image" and image["Name"] == "tiny root"
    kinds = {i["ImageId"]: i["ImageType"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    assert kinds[kernel] == "kernel" and kinds[ramdisk] == "ramdisk"
    # Filters, and the image manifest imagecache published for the node side.
    found = ec2.describe_images(Filters=[{"Name": "image-type", "Values": ["kernel"]}])["Images"]
    assert [i["ImageId"] for i in found] == [kernel]
    found = ec2.describe_images(Filters=[{"Name": "name", "Values": ["tiny r*"]}])["Images"]
    assert {i["ImageId"] for i in found} == {machine, ramdisk}
    admin_env = user_environment(cloud["cloud"].control_dir, "eucalyptus", "admin", root / "creds-admin")
    published = json.loads(_s3(admin_env).get_object(Bucket="eucalypt-images",
                                                     Key=f"manifests/{machine}.json")["Body"].read())
    assert published["image_id"] == machine and published["size"] == 3 << 20
    cloud["machine"], cloud["kernel"], cloud["ramdisk"] = machine, kernel, ramdisk


def test_private_images_are_invisible_until_shared(cloud):
    machine = cloud.get("machine") or pytest.skip("needs the registered images")
    ec2_a, ec2_b = cloud["ec2_a"], cloud["ec2_b"]
    account_b = ec2_b.describe_security_groups()["SecurityGroups"][0]["OwnerId"]
    assert machine not in {i["ImageId"] for i in ec2_b.describe_images()["Images"]}
    with pytest.raises(ClientError) as exc:
        ec2_b.describe_images(ImageIds=[machine])
    assert _code(exc) == "InvalidAMIID.NotFound"
    with pytest.raises(ClientError) as exc:
        ec2_b.deregister_image(ImageId=machine)
    assert _code(exc) == "InvalidAMIID.NotFound"
    # Share with B's account: B sees it (and may launch it) but cannot change it.
    ec2_a.modify_image_attribute(ImageId=machine, LaunchPermission={"Add": [{"UserId": account_b}]})
    perms = ec2_a.describe_image_attribute(ImageId=machine, Attribute="launchPermission")["LaunchPermissions"]
    assert perms == [{"UserId": account_b}]
    assert ec2_b.describe_images(ImageIds=[machine])["Images"][0]["ImageId"] == machine
    assert machine in {i["ImageId"] for i in ec2_b.describe_images(ExecutableUsers=["self"])["Images"]}
    with pytest.raises(ClientError) as exc:
        ec2_b.modify_image_attribute(ImageId=machine, LaunchPermission={"Add": [{"Group": "all"}]})
    assert _code(exc) == "AuthFailure"
    ec2_a.modify_image_attribute(ImageId=machine, LaunchPermission={"Remove": [{"UserId": account_b}],
                                                                    "Add": [{"Group": "all"}]})
    image = ec2_b.describe_images(ImageIds=[machine])["Images"][0]
    assert image["Public"] is True
    assert machine in {i["ImageId"] for i in ec2_b.describe_images(ExecutableUsers=["all"])["Images"]}
    ec2_a.reset_image_attribute(ImageId=machine, Attribute="launchPermission")
    with pytest.raises(ClientError) as exc:
        ec2_b.describe_images(ImageIds=[machine])
    assert _code(exc) == "InvalidAMIID.NotFound"
    with pytest.raises(ClientError) as exc:
        ec2_a.modify_image_attribute(ImageId=machine, LaunchPermission={"Add": [{"Group": "everyone"}]})
    assert _code(exc) == "InvalidAMIAttributeItemValue"


def test_aws_cli_register_describe_deregister(cloud):
    root, env = cloud["root"], cloud["env_a"]
    location = bundle_and_upload(env, _image(root / "cli.img", 1 << 20, 4), root / "bc", "acme-cli")
    cli_env = {**env, "AWS_DEFAULT_REGION": "eucalyptus", "AWS_CONFIG_FILE": "/dev/null",
               "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}

    def aws(*args):
        out = subprocess.run([str(VENV_BIN / "aws"), "--endpoint-url", cloud["cloud"].control.url, "ec2", *args,
                              "--output", "json"], env=cli_env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else {}

    image_id = aws("register-image", "--image-location", location, "--name", "cli image")["ImageId"]
    assert wait_image(cloud["ec2_a"], image_id)["State"] == "available"
    shown = aws("describe-images", "--image-ids", image_id)["Images"][0]
    assert shown["State"] == "available" and shown["Name"] == "cli image"
    aws("create-tags", "--resources", image_id, "--tags", "Key=role,Value=web")
    tagged = aws("describe-images", "--filters", "Name=tag:role,Values=web")["Images"]
    assert [i["ImageId"] for i in tagged] == [image_id]
    paged = cloud["ec2_a"].get_paginator("describe_images").paginate(Owners=["self"], PaginationConfig={"PageSize": 5})
    pages = list(paged)
    assert {i["ImageId"] for page in pages for i in page["Images"]} == \
        {i["ImageId"] for i in cloud["ec2_a"].describe_images(Owners=["self"])["Images"]}
    aws("deregister-image", "--image-id", image_id)
    assert image_id not in {i["ImageId"] for i in aws("describe-images", "--owners", "self")["Images"]}


def test_register_refusals(cloud):
    root, env_a, env_b, ec2_a, ec2_b = (cloud[k] for k in ("root", "env_a", "env_b", "ec2_a", "ec2_b"))
    location = bundle_and_upload(env_a, _image(root / "refused.img", 1 << 20, 5), root / "bx", "acme-refused")
    cases = [
        (ec2_a, {"ImageLocation": location, "Name": "bad\tname"}, "InvalidParameterValue"),
        (ec2_a, {"ImageLocation": "acme-refused/nothing.manifest.xml", "Name": "nothing"}, "InvalidManifest"),
        (ec2_a, {"ImageLocation": "no-such-bucket-here/x.manifest.xml", "Name": "nothing"}, "InvalidManifest"),
        (ec2_a, {"ImageLocation": location, "Name": "bad kernel", "KernelId": "eki-00000000"},
         "InvalidAMIID.NotFound"),
        # B may not read A's private bundle, so B cannot register it.
        (ec2_b, {"ImageLocation": location, "Name": "stolen"}, "InvalidManifest"),
    ]
    for client, params, code in cases:
        with pytest.raises(ClientError) as exc:
            client.register_image(**params)
        assert _code(exc) == code, (params, exc.value)
    first = ec2_a.register_image(ImageLocation=location, Name="twice")["ImageId"]
    with pytest.raises(ClientError) as exc:
        ec2_a.register_image(ImageLocation=location, Name="twice")
    assert _code(exc) == "InvalidAMIName.Duplicate"
    assert wait_image(ec2_a, first)["State"] == "available"
    for bad, code in (("emi-xyz", "InvalidAMIID.Malformed"), ("emi-0badc0de", "InvalidAMIID.NotFound")):
        with pytest.raises(ClientError) as exc:
            ec2_a.describe_images(ImageIds=[bad])
        assert _code(exc) == code


def test_bundle_for_another_cloud_or_signer_is_refused(cloud, tmp_path):
    root, env = cloud["root"], cloud["env_a"]
    other = start_control(tmp_path / "other-cloud")  # a second cloud: its own CA and cloud key
    other.stop()
    image = _image(root / "foreign.img", 1 << 20, 6)
    # Encrypted for the other cloud: the key does not open with ours.
    foreign = dict(env, EUCALYPTUS_CERT=str(tmp_path / "other-cloud" / "cloud-cert.pem"))
    location = bundle_and_upload(foreign, image, root / "bf", "acme-foreign")
    with pytest.raises(ClientError) as exc:
        cloud["ec2_a"].register_image(ImageLocation=location, Name="foreign")
    assert _code(exc) == "InvalidManifest" and "cloud" in exc.value.response["Error"]["Message"]
    # Signed with a key this cloud never certified for the account.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "stranger")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "stranger-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "stranger-pk.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    stranger = dict(env, EC2_CERT=str(tmp_path / "stranger-cert.pem"), EC2_PRIVATE_KEY=str(tmp_path / "stranger-pk.pem"))
    location = bundle_and_upload(stranger, image, root / "bs", "acme-stranger")
    with pytest.raises(ClientError) as exc:
        cloud["ec2_a"].register_image(ImageLocation=location, Name="stranger")
    assert _code(exc) == "InvalidManifest" and "signature" in exc.value.response["Error"]["Message"]


def test_tampered_part_fails_with_reason(cloud):
    root, env, ec2 = cloud["root"], cloud["env_a"], cloud["ec2_a"]
    location = bundle_and_upload(env, _image(root / "tampered.img", 2 << 20, 7), root / "bt", "acme-tampered")
    s3 = _s3(env)
    part = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="acme-tampered")["Contents"]
                  if ".part." in o["Key"])[0]
    body = bytearray(s3.get_object(Bucket="acme-tampered", Key=part)["Body"].read())
    body[100] ^= 0xFF
    s3.put_object(Bucket="acme-tampered", Key=part, Body=bytes(body), ACL="aws-exec-read")
    image_id = ec2.register_image(ImageLocation=location, Name="tampered")["ImageId"]
    image = wait_image(ec2, image_id)
    assert image["State"] == "failed"
    assert image["StateReason"]["Code"] == "bundle-part-tampered"
    assert part.rsplit("/", 1)[-1] in image["StateReason"]["Message"]
    failed = ec2.describe_images(Filters=[{"Name": "state", "Values": ["failed"]}])["Images"]
    assert image_id in {i["ImageId"] for i in failed}


def test_pending_image_survives_kill_9(tmp_path):
    cloud = start_cloud(tmp_path)
    try:
        keys = create_user(cloud.control_dir, "acme", "alice")
        env = user_environment(cloud.control_dir, "acme", "alice", tmp_path / "creds")
        location = bundle_and_upload(env, _image(tmp_path / "big.img", 24 << 20, 8), tmp_path / "b", "acme-big")
        ec2 = ec2_client(cloud.control.url, keys)
        image_id = ec2.register_image(ImageLocation=location, Name="big")["ImageId"]
        port = cloud.control.port
        cloud.control.kill()  # SIGKILL, mid-prepare
        cloud.control = start_control(cloud.control_dir, port=port, extra=["--walrus", cloud.walrus.url + "/"])
        image = wait_image(ec2_client(cloud.control.url, keys), image_id)
        assert image["State"] == "available", image
    finally:
        cloud.stop()
