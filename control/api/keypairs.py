"""Key pairs: CreateKeyPair, ImportKeyPair, DescribeKeyPairs, DeleteKeyPair.

Only the public half is kept (OpenSSH form, for injecting into instances later); the
private key of a created pair is returned once and forgotten, as in AWS.

Fingerprints follow AWS's definitions:
  * RSA, created by us: SHA-1 of the DER PKCS#8 private key, colon-separated hex
  * RSA, imported: MD5 of the DER SubjectPublicKeyInfo public key, colon-separated hex
  * ED25519 (either way): base64 of the SHA-256 of the OpenSSH public key blob
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import secrets

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ..errors import Ec2Error, invalid, missing
from ..store import get_json, get_text, put_json, put_text, scan_json
from .context import Context
from .params import filters, tag_filter_matches
from .tags import delete_all_tags, tag_set, tag_specifications, tags_of, write_tags

RSA_SIZES = (1024, 2048, 3072, 4096)


def _colon_hex(digest: bytes) -> str:
    return ":".join(f"{b:02x}" for b in digest)


def created_rsa_fingerprint(key: rsa.RSAPrivateKey) -> str:
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return _colon_hex(hashlib.sha1(der).digest())


def imported_rsa_fingerprint(key: rsa.RSAPublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _colon_hex(hashlib.md5(der).digest())


def ed25519_fingerprint(key: ed25519.Ed25519PublicKey) -> str:
    blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1]
    return base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode()


def _openssh(public_key) -> str:
    return public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _check_name(name: str) -> str:
    if len(name) > 255 or not name.isascii() or not name.isprintable() or name != name.strip():
        raise invalid("KeyName", name, "key names are 1-255 printable ASCII characters")
    return name


def _key_type(value: str | None) -> str:
    value = value or "rsa"
    if value not in ("rsa", "ed25519"):
        raise invalid("KeyType", value, "expected rsa or ed25519")
    return value


def _record_key(account_id: str, name: str) -> str:
    return f"{account_id}/{name}"


def _store_pair(ctx: Context, name: str, record: dict, tags: list[tuple[str, str]]):
    account = ctx.account_id

    def mutate(txn):
        if txn.get("keypairs", _record_key(account, name).encode()) is not None:
            raise Ec2Error("InvalidKeyPair.Duplicate", f"The keypair '{name}' already exists.")
        while True:
            pair_id = "key-" + secrets.token_hex(9)[:17]
            if txn.get("keypair_ids", pair_id.encode()) is None:
                break
        put_json(txn, "keypairs", _record_key(account, name), {**record, "id": pair_id, "name": name})
        put_text(txn, "keypair_ids", pair_id, _record_key(account, name))
        write_tags(txn, account, pair_id, tags)
        return pair_id

    return ctx.store.write(mutate)


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def generate_key(key_type: str) -> tuple[str, str, str]:
    """A new key pair: (AWS fingerprint, private key PEM, OpenSSH public key)."""
    if key_type == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return (created_rsa_fingerprint(private),
                private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()).decode(),
                _openssh(private.public_key()))
    private = ed25519.Ed25519PrivateKey.generate()
    return (ed25519_fingerprint(private.public_key()),
            private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                  serialization.NoEncryption()).decode(),
            _openssh(private.public_key()))


async def create_key_pair(ctx: Context) -> dict:
    name = _check_name(ctx.params.required("KeyName"))
    key_type = _key_type(ctx.params.get("KeyType"))
    key_format = ctx.params.get("KeyFormat") or "pem"
    if key_format != "pem":
        raise invalid("KeyFormat", key_format, "only pem is supported")
    tags = tag_specifications(ctx.params, "key-pair")
    # RSA key generation takes tens of milliseconds: off the event loop.
    fingerprint, material, public = await asyncio.to_thread(generate_key, key_type)
    record = {"fingerprint": fingerprint, "public_key": public, "type": key_type, "created": ctx.now()}
    pair_id = await _store_pair(ctx, name, record, tags)
    return {"keyName": name, "keyFingerprint": fingerprint, "keyMaterial": material, "keyPairId": pair_id,
            "tagSet": tag_set(dict(tags))}


def _load_public_key(material: str):
    raw = material.strip().encode()
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        decoded = None
    for candidate in ([decoded] if decoded else []) + [raw]:
        text = candidate.strip()
        try:
            if text.startswith(b"-----BEGIN"):
                return serialization.load_pem_public_key(text)
            if text.startswith(b"ssh-"):
                return serialization.load_ssh_public_key(b" ".join(text.split()[:2]))
        except (ValueError, TypeError, IndexError):
            continue
    raise Ec2Error("InvalidKey.Format", "Key is not in valid OpenSSH public key format")


async def import_key_pair(ctx: Context) -> dict:
    name = _check_name(ctx.params.required("KeyName"))
    public = _load_public_key(ctx.params.required("PublicKeyMaterial"))
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size not in RSA_SIZES:
            raise Ec2Error("InvalidKey.Format", f"RSA keys must be one of {RSA_SIZES} bits long")
        fingerprint, key_type = imported_rsa_fingerprint(public), "rsa"
    elif isinstance(public, ed25519.Ed25519PublicKey):
        fingerprint, key_type = ed25519_fingerprint(public), "ed25519"
    else:
        raise Ec2Error("InvalidKey.Format", "Only RSA and ED25519 keys are supported")
    tags = tag_specifications(ctx.params, "key-pair")
    record = {"fingerprint": fingerprint, "public_key": _openssh(public), "type": key_type, "created": ctx.now()}
    pair_id = await _store_pair(ctx, name, record, tags)
    return {"keyName": name, "keyFingerprint": fingerprint, "keyPairId": pair_id, "tagSet": tag_set(dict(tags))}


DESCRIBE_FILTERS = frozenset({"key-name", "fingerprint", "key-pair-id", "key-type"})


async def describe_key_pairs(ctx: Context) -> dict:
    names = ctx.params.list("KeyName")
    ids = ctx.params.list("KeyPairId")
    flts = filters(ctx.params, DESCRIBE_FILTERS)
    include_public = ctx.params.bool("IncludePublicKey")
    account = ctx.account_id
    with ctx.store.read() as txn:
        pairs = [rec for _, rec in scan_json(txn, "keypairs", f"{account}/")]
        for name in names:
            if not any(p["name"] == name for p in pairs):
                raise Ec2Error("InvalidKeyPair.NotFound", f"The key pair '{name}' does not exist")
        for pair_id in ids:
            if not any(p["id"] == pair_id for p in pairs):
                raise Ec2Error("InvalidKeyPair.NotFound", f"The key pair ID '{pair_id}' does not exist")
        out = []
        for pair in pairs:
            if names and pair["name"] not in names or ids and pair["id"] not in ids:
                continue
            tags = tags_of(txn, account, pair["id"])
            fields = {"key-name": pair["name"], "fingerprint": pair["fingerprint"], "key-pair-id": pair["id"],
                      "key-type": pair["type"]}
            if not all(f.matches(fields[f.name]) if f.name in fields else tag_filter_matches(f, tags)
                       for f in flts):
                continue
            out.append({"keyPairId": pair["id"], "keyFingerprint": pair["fingerprint"], "keyName": pair["name"],
                        "keyType": pair["type"], "tagSet": tag_set(tags),
                        "publicKey": pair["public_key"] if include_public else None,
                        "createTime": _iso(pair["created"])})
    return {"keySet": out}


async def delete_key_pair(ctx: Context) -> dict:
    name = ctx.params.get("KeyName")
    pair_id = ctx.params.get("KeyPairId")
    if not name and not pair_id:
        raise missing("KeyName")
    account = ctx.account_id

    def mutate(txn):
        key = _record_key(account, name) if name else None
        if pair_id:
            where = get_text(txn, "keypair_ids", pair_id)
            if where is None or not where.startswith(account + "/"):
                return None  # as AWS: deleting what is not there succeeds
            key = where
        rec = get_json(txn, "keypairs", key)
        if rec is None:
            return None
        txn.delete("keypairs", key.encode())
        txn.delete("keypair_ids", rec["id"].encode())
        delete_all_tags(txn, account, rec["id"])
        return rec["id"]

    deleted = await ctx.store.write(mutate)
    return {"return": True, "keyPairId": deleted}


ACTIONS = {"CreateKeyPair": create_key_pair, "ImportKeyPair": import_key_pair,
           "DescribeKeyPairs": describe_key_pairs, "DeleteKeyPair": delete_key_pair}
