"""One identity on EC2 and S3: Walrus authenticating users against a real control."""

import time

import pytest
from botocore.exceptions import ClientError

from controltest import admin, create_user, ec2_client, start_control
from walrustest import UserKeys, s3_client, start_walrus


@pytest.fixture
def cloud(tmp_path):
    control = start_control(tmp_path / "control")
    walrus = start_walrus(tmp_path / "walrus", None, extra=[
        "--control", control.url, "--service-secret-file", str(tmp_path / "control" / "service.secret")])
    yield control, walrus
    walrus.stop()
    control.stop()


def test_same_keys_on_ec2_and_s3(cloud, tmp_path):
    control, walrus = cloud
    keys = create_user(tmp_path / "control", "acme", "carol")
    s3 = s3_client(walrus.url, UserKeys(keys.user, keys.access_key, keys.secret_key))
    s3.create_bucket(Bucket="acme-data")
    s3.put_object(Bucket="acme-data", Key="k", Body=b"one identity")
    assert s3.get_object(Bucket="acme-data", Key="k")["Body"].read() == b"one identity"
    assert ec2_client(control.url, keys).describe_regions()["Regions"]
    # A second user of another account is a stranger to acme's private data.
    other = create_user(tmp_path / "control", "globex", "dave")
    stranger = s3_client(walrus.url, UserKeys(other.user, other.access_key, other.secret_key))
    with pytest.raises(ClientError) as exc:
        stranger.get_object(Bucket="acme-data", Key="k")
    assert exc.value.response["Error"]["Code"] == "AccessDenied"
    bad = s3_client(walrus.url, UserKeys("x", "AKIDNOBODY0000000000", "nope"))
    with pytest.raises(ClientError) as exc:
        bad.list_buckets()
    assert exc.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_disabled_user_is_refused_within_seconds(cloud, tmp_path):
    control, walrus = cloud
    keys = create_user(tmp_path / "control", "initech", "peter")
    s3 = s3_client(walrus.url, UserKeys(keys.user, keys.access_key, keys.secret_key))
    s3.list_buckets()
    admin(tmp_path / "control", "user", "disable", "peter", "--account", "initech")
    code = None
    for _ in range(100):  # the lookup cache lives ~2 s
        try:
            s3.list_buckets()
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            break
        time.sleep(0.1)
    assert code == "InvalidAccessKeyId"


def test_control_down_is_service_unavailable(cloud, tmp_path):
    control, walrus = cloud
    keys = create_user(tmp_path / "control", "hooli", "gavin")
    control.kill()
    s3 = s3_client(walrus.url, UserKeys(keys.user, keys.access_key, keys.secret_key))
    with pytest.raises(ClientError) as exc:
        s3.list_buckets()
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
