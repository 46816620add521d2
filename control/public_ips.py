"""Public addresses given automatically at launch (``--auto-public-ips``), as EC2-Classic
and Eucalyptus do: every instance gets a free address of the elastic IP pool, held for it
alone and released when it terminates or when an elastic IP takes its place.

Such an address is an ``addresses`` record like an allocation (so AllocateAddress never
hands it out) with ``"auto": true``, no owning account and no allocation id: it belongs
to the instance, so no account's DescribeAddresses lists it. Pure functions inside the
caller's transaction.
"""

from __future__ import annotations

from . import policy
from .store import get_json, put_json


def is_auto(address: dict | None) -> bool:
    return bool(address and address.get("auto"))


def assign(txn, pool: list[str], record: dict, now: float) -> str | None:
    """Give the instance record (not yet written back) a free pool address; None when the
    pool is exhausted (the instance runs without one, as Eucalyptus's do)."""
    for ip in pool:
        if txn.get("addresses", ip.encode()) is None:
            put_json(txn, "addresses", ip, {"public_ip": ip, "allocation_id": None, "account": None,
                                            "domain": "standard", "auto": True, "instance_id": record["id"],
                                            "association_id": None, "private_ip": record.get("private_ip"),
                                            "allocated": now})
            record.update(public_ip=ip, allocation_id=None, association_id=None)
            policy.bump(txn)
            return ip
    return None


def drop(txn, ip: str | None) -> bool:
    """Return an automatic address to the pool (False: `ip` is not one)."""
    if ip and is_auto(get_json(txn, "addresses", ip)):
        txn.delete("addresses", ip.encode())
        policy.bump(txn)
        return True
    return False
