"""Writing a user's credentials directory (the file contract of docs/DESIGN.md).

    eucarc  iamrc  cert.pem  pk.pem  cloud-cert.pem  aws-config  euca2ools.ini  s3cfg

Each call issues the user a fresh X.509 certificate signed by the cloud CA (as
Eucalyptus' euca-get-credentials did) and records the certificate with the user; the
private key exists only in pk.pem. The newest access key of the user goes into the
files. eucarc finds its directory itself, so the directory can be moved.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from .ca import write_private
from .datadir import DataDir
from .identity import IdentityError, account_by_name, add_certificate, get_user, user_keys


def _host_port(url: str) -> tuple[str, bool]:
    parts = urlsplit(url)
    return parts.netloc, parts.scheme == "https"


def write_credentials(data: DataDir, account_name: str, user_name: str, out: Path, *,
                      ec2_url: str | None = None, s3_url: str | None = None,
                      region: str | None = None) -> Path:
    endpoints = data.endpoints()
    ec2_url = ec2_url or endpoints["ec2_url"]
    s3_url = s3_url or endpoints["s3_url"]
    region = region or endpoints["region"]
    with data.store.read() as txn:
        account = account_by_name(txn, account_name)
        user = get_user(txn, account.id, user_name)
        keys = user_keys(txn, user)
    if not keys:
        raise IdentityError(f"user {user_name!r} has no access key; create one with `user keys create`")
    key = keys[-1]
    cert_pem, key_pem = data.ca.issue_user_certificate(account.id, user_name)
    data.store.write_sync(lambda txn: add_certificate(txn, account.id, user_name, cert_pem))

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    s3_host, s3_https = _host_port(s3_url)
    profile = f"{account_name}-{user_name}"
    files = {
        "cert.pem": (cert_pem, 0o644),
        "pk.pem": (key_pem, 0o600),
        "cloud-cert.pem": (data.ca.cert_pem, 0o644),
        "iamrc": (f"AWSAccessKeyId={key.access_key}\nAWSSecretKey={key.secret_key}\n", 0o600),
        "eucarc": (f"""\
# eucalypt credentials for user {user_name} of account {account_name} ({account.id})
# Use: source eucarc   (then: aws --endpoint-url "$EC2_URL" ec2 describe-regions)
EUCA_KEY_DIR=$(cd "$(dirname "${{BASH_SOURCE:-$0}}")" && pwd -P)
export EC2_URL={ec2_url}
export S3_URL={s3_url}
export AWS_ACCESS_KEY_ID={key.access_key}
export AWS_SECRET_ACCESS_KEY='{key.secret_key}'
export AWS_ACCESS_KEY={key.access_key}
export AWS_SECRET_KEY='{key.secret_key}'
export EC2_ACCESS_KEY={key.access_key}
export EC2_SECRET_KEY='{key.secret_key}'
export AWS_CREDENTIAL_FILE="${{EUCA_KEY_DIR}}/iamrc"
export EC2_CERT="${{EUCA_KEY_DIR}}/cert.pem"
export EC2_PRIVATE_KEY="${{EUCA_KEY_DIR}}/pk.pem"
export EUCALYPTUS_CERT="${{EUCA_KEY_DIR}}/cloud-cert.pem"
export EC2_USER_ID={account.id}
export AWS_DEFAULT_REGION={region}
export AWS_ENDPOINT_URL_EC2={ec2_url}
export AWS_ENDPOINT_URL_S3={s3_url}
""", 0o600),
        "aws-config": (f"""\
# An aws cli profile: append to ~/.aws/config, or AWS_CONFIG_FILE=aws-config aws --profile {profile} ...
[profile {profile}]
region = {region}
aws_access_key_id = {key.access_key}
aws_secret_access_key = {key.secret_key}
endpoint_url = {ec2_url}
services = {profile}-services

[services {profile}-services]
ec2 =
  endpoint_url = {ec2_url}
s3 =
  endpoint_url = {s3_url}
  addressing_style = path
""", 0o600),
        "euca2ools.ini": (f"""\
[global]
default-region = {region}

[region {region}]
ec2-url = {ec2_url}
s3-url = {s3_url}
certificate = {out / 'cloud-cert.pem'}
user = {profile}

[user {profile}]
key-id = {key.access_key}
secret-key = {key.secret_key}
account-id = {account.id}
certificate = {out / 'cert.pem'}
private-key = {out / 'pk.pem'}
""", 0o600),
        "s3cfg": (f"""\
[default]
access_key = {key.access_key}
secret_key = {key.secret_key}
host_base = {s3_host}
host_bucket = {s3_host}
use_https = {s3_https}
signature_v2 = False
bucket_location = {region}
check_ssl_certificate = {s3_https}
""", 0o600),
    }
    for name, (text, mode) in files.items():
        write_private(out / name, text.encode(), mode=mode)
    return out


__all__ = ["write_credentials"]
