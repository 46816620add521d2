"""Accounts, users, keys and credentials of a real control process: the admin CLI, the
credentials directory used from bash with the aws cli and s3cmd, and the internal user
lookup behind ControlUserDirectory (Walrus authenticating control's users)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess

import botocore.exceptions
import pytest

from control.client import ControlUnavailable, ControlUserDirectory, read_service_secret
from controltest import VENV_BIN, Keys, admin, create_user, ec2_client, start_control


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    data = tmp_path_factory.mktemp("control-id") / "data"
    carol = create_user(data, "gamma", "carol")
    server = start_control(data)
    yield server, carol
    server.stop()


def code_of(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def test_first_start_made_ca_and_admin(cloud):
    server, _ = cloud
    assert stat.S_IMODE(os.stat(server.data_dir / "cloud-pk.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server.data_dir / "service.secret").st_mode) == 0o600
    accounts = admin(server.data_dir, "account", "list").stdout
    assert "\teucalyptus\tenabled" in accounts and "\tgamma\tenabled" in accounts
    assert "eucalyptus\tadmin\tenabled" in admin(server.data_dir, "user", "list").stdout
    bad = admin(server.data_dir, "account", "create", "gamma", check=False)
    assert bad.returncode == 1 and "already exists" in bad.stderr


def test_credentials_dir_works_from_bash_with_aws_cli(cloud, tmp_path):
    server, _ = cloud
    out = tmp_path / "creds"
    admin(server.data_dir, "credentials", "admin", "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["eucarc", "iamrc", "cert.pem", "pk.pem", "cloud-cert.pem", "aws-config", "euca2ools.ini", "s3cfg"])
    assert stat.S_IMODE(os.stat(out / "pk.pem").st_mode) == 0o600
    assert (out / "cloud-cert.pem").read_text() == (server.data_dir / "cloud-cert.pem").read_text()
    script = f"""
        set -e
        cd /
        source {out}/eucarc
        for v in EC2_URL S3_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_ACCESS_KEY AWS_SECRET_KEY \
                 EC2_ACCESS_KEY EC2_SECRET_KEY AWS_CREDENTIAL_FILE EC2_CERT EC2_PRIVATE_KEY \
                 EUCALYPTUS_CERT EC2_USER_ID AWS_DEFAULT_REGION; do
            test -n "${{!v}}" || {{ echo "unset: $v"; exit 1; }}
        done
        test -f "$EC2_CERT" && test -f "$EC2_PRIVATE_KEY" && test -f "$EUCALYPTUS_CERT" && test -f "$AWS_CREDENTIAL_FILE"
        aws --endpoint-url "$EC2_URL" ec2 create-security-group --group-name from-bash --description bash \
            --query GroupId --output text
        aws --endpoint-url "$EC2_URL" ec2 describe-security-groups --group-names from-bash \
            --query 'SecurityGroups[0].OwnerId' --output text
        echo "user=$EC2_USER_ID"
        # The aws cli profile alone (no environment) reaches the same cloud.
        env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_ENDPOINT_URL_EC2 \
            AWS_CONFIG_FILE={out}/aws-config aws --profile eucalyptus-admin ec2 describe-security-groups \
            --group-names from-bash --query 'SecurityGroups[0].GroupName' --output text
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    env["HOME"] = str(tmp_path)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    group_id, owner, user_line, via_profile = done.stdout.split()
    assert group_id.startswith("sg-") and user_line == f"user={owner}" and via_profile == "from-bash"


def test_user_certificate_is_signed_by_the_cloud(cloud, tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import padding

    server, carol = cloud
    admin(server.data_dir, "credentials", "carol", "--account", "gamma", "--out", str(tmp_path))
    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "cloud-cert.pem").read_bytes())
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                           cert.signature_hash_algorithm)
    assert cert.issuer == ca.subject
    assert "carol" in cert.subject.rfc4514_string()
    assert carol.access_key in (tmp_path / "iamrc").read_text()


def test_keys_rotate_and_delete(cloud):
    server, _ = cloud
    dave = create_user(server.data_dir, "gamma", "dave", create_account=False)
    new_key, new_secret = admin(server.data_dir, "user", "keys", "create", "dave", "-a", "gamma").stdout.split()
    second = Keys("gamma", "dave", new_key, new_secret)
    for keys in (dave, second):  # the old key keeps working alongside the new one
        assert ec2_client(server.url, keys).describe_regions()["Regions"]
    limit = admin(server.data_dir, "user", "keys", "create", "dave", "-a", "gamma", check=False)
    assert limit.returncode == 1 and "2 access keys" in limit.stderr
    third_key, third_secret = admin(server.data_dir, "user", "keys", "rotate", "dave", "-a", "gamma").stdout.split()
    with pytest.raises(botocore.exceptions.ClientError) as e:  # rotate dropped the oldest
        ec2_client(server.url, dave).describe_regions()
    assert code_of(e) == "AuthFailure"
    admin(server.data_dir, "user", "keys", "delete", "dave", second.access_key, "-a", "gamma")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2_client(server.url, second).describe_regions()
    assert code_of(e) == "AuthFailure"
    assert ec2_client(server.url, Keys("gamma", "dave", third_key, third_secret)).describe_regions()
    listed = admin(server.data_dir, "user", "keys", "list", "dave", "-a", "gamma").stdout
    assert listed.split()[0] == third_key and len(listed.splitlines()) == 1


def test_disabled_user_and_account_cannot_sign(cloud):
    server, _ = cloud
    erin = create_user(server.data_dir, "delta", "erin")
    client = ec2_client(server.url, erin)
    client.create_key_pair(KeyName="erin-key")
    for disable, enable in ((["user", "disable", "erin", "-a", "delta"], ["user", "enable", "erin", "-a", "delta"]),
                            (["account", "disable", "delta"], ["account", "enable", "delta"])):
        admin(server.data_dir, *disable)
        with pytest.raises(botocore.exceptions.ClientError) as e:
            client.describe_key_pairs()
        assert code_of(e) == "AuthFailure"
        admin(server.data_dir, *enable)
        assert [k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"]] == ["erin-key"]


async def test_control_user_directory(cloud):
    from walrus.users import canonical_id_for

    server, carol = cloud
    secret = read_service_secret(server.data_dir)
    users = ControlUserDirectory(server.url, secret, ttl=0.5)
    try:
        found = await users.by_access_key(carol.access_key)
        assert found is not None and found.secret_key == carol.secret_key and found.enabled
        assert found.display_name == "gamma"
        assert await users.by_access_key("AKIANOSUCHKEY0000000") is None
        account = await users.by_canonical_id(found.canonical_id)
        assert account is not None and account.display_name == "gamma"
        assert found.canonical_id == canonical_id_for(found.name)
        assert await users.by_canonical_id("0" * 64) is None
        before = users.requests
        await users.by_access_key(carol.access_key)
        assert users.requests == before  # from the cache

        await asyncio.to_thread(admin, server.data_dir, "user", "disable", "carol", "-a", "gamma")
        await asyncio.sleep(0.6)
        assert await users.by_access_key(carol.access_key) is None
        await asyncio.to_thread(admin, server.data_dir, "user", "enable", "carol", "-a", "gamma")
        await asyncio.sleep(0.6)
        assert (await users.by_access_key(carol.access_key)) is not None
    finally:
        await users.close()
    intruder = ControlUserDirectory(server.url, "wrong-secret")
    try:
        with pytest.raises(ControlUnavailable):
            await intruder.by_access_key(carol.access_key)
    finally:
        await intruder.close()


async def test_one_identity_on_walrus_with_s3cmd(cloud, tmp_path):
    """Walrus wired to control (in process): control's user runs s3cmd from its s3cfg."""
    from walrus.server import WalrusConfig, WalrusServer

    server, carol = cloud
    users = ControlUserDirectory(server.url, read_service_secret(server.data_dir))
    walrus = WalrusServer(WalrusConfig(data_dir=tmp_path / "walrus", port=0), users=users)
    await walrus.start()
    try:
        creds = tmp_path / "creds"
        await asyncio.to_thread(admin, server.data_dir, "credentials", "carol", "-a", "gamma", "--out", str(creds),
                                "--s3-url", walrus.url)
        (tmp_path / "hello.txt").write_text("hello from control's user\n")
        cfg = str(creds / "s3cfg")
        for args in (["mb", "s3://carol-bucket"], ["put", str(tmp_path / "hello.txt"), "s3://carol-bucket/hello.txt"],
                     ["get", "s3://carol-bucket/hello.txt", str(tmp_path / "back.txt")]):
            proc = await asyncio.create_subprocess_exec(
                str(VENV_BIN / "s3cmd"), "-c", cfg, *args, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env={**os.environ, "HOME": str(tmp_path)})
            out, err = await proc.communicate()
            assert proc.returncode == 0, (args, out, err)
        assert (tmp_path / "back.txt").read_text() == "hello from control's user\n"
    finally:
        await walrus.stop()
        await users.close()
