"""The cloud's own description: DescribeRegions, DescribeAvailabilityZones (with
Eucalyptus' ``ZoneName.1=verbose`` capacity listing), DescribeInstanceTypes, and
Eucalyptus' DescribeServiceCertificates.

DescribeServiceCertificates answers as Eucalyptus 4's services API did (fields
serviceType, certificateUsage, certificateFormat, certificateFingerprintDigest,
certificateFingerprint, certificate) inside this server's EC2 response document, under
``<serviceCertificates><member>``: the cloud certificate, for image bundling.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization

from ..errors import Ec2Error, invalid
from .context import Context
from .params import filters


async def describe_regions(ctx: Context) -> dict:
    config = ctx.service.config
    flts = filters(ctx.params, frozenset({"region-name", "endpoint", "opt-in-status"}), tags=False)
    names = ctx.params.list("RegionName")
    region = {"region-name": config.region, "endpoint": ctx.service.public_url,
              "opt-in-status": "opt-in-not-required"}
    keep = (not names or config.region in names) and all(f.matches(region[f.name]) for f in flts)
    items = [{"regionName": config.region, "regionEndpoint": ctx.service.public_url,
              "optInStatus": "opt-in-not-required"}] if keep else []
    return {"regionInfo": items}


async def describe_availability_zones(ctx: Context) -> dict:
    config = ctx.service.config
    flts = filters(ctx.params, frozenset({"zone-name", "state", "region-name", "zone-id", "zone-type"}), tags=False)
    names = ctx.params.list("ZoneName")
    verbose = any(n.lower() == "verbose" for n in names)
    for name in names:
        if name not in config.zones and name.lower() != "verbose":
            raise invalid("ZoneName", name, f"The zone '{name}' does not exist")
    items = []
    for index, zone in enumerate(config.zones):
        zone_id = f"{config.region}-az{index + 1}"
        row = {"zone-name": zone, "state": "available", "region-name": config.region, "zone-id": zone_id,
               "zone-type": "availability-zone"}
        wanted = [n for n in names if n.lower() != "verbose"]
        if wanted and zone not in wanted or not all(f.matches(row[f.name]) for f in flts):
            continue
        items.append({"zoneName": zone, "zoneState": "available", "regionName": config.region,
                      "zoneId": zone_id, "zoneType": "availability-zone", "groupName": config.region,
                      "optInStatus": "opt-in-not-required", "messageSet": []})
        if verbose:
            items += _vm_types(ctx, zone)
    return {"availabilityZoneInfo": items}


def _vm_types(ctx: Context, zone: str) -> list[dict]:
    """Eucalyptus' verbose zone listing: one item per instance type, "free / max cpu ram
    disk", where free counts what fits in what the zone's reachable nodes have left and
    max what would fit on them empty."""
    from .. import instances as inst
    from .. import nodes as nodes_mod
    from ..scheduler import NodeCapacity, how_many_fit

    config, now = ctx.service.config, ctx.now()
    with ctx.store.read() as txn:
        free = inst.capacities(txn, zone, now, config.heartbeat_interval)
        empty = [NodeCapacity(n["node_id"], *nodes_mod.totals(n)) for n in nodes_mod.list_nodes(txn, zone)
                 if nodes_mod.reachable(n, now, config.heartbeat_interval)]
    rows = [{"zoneName": "|- vm types", "zoneState": "free / max   cpu   ram  disk", "regionName": config.region}]
    for name, spec in config.instance_types.items():
        need = dict(cores=spec.cpus, memory_mib=spec.memory_mib, disk_gb=spec.disk_gb)
        n_free = sum(how_many_fit(n, **need) for n in free)
        n_max = sum(how_many_fit(n, **need) for n in empty)
        rows.append({"zoneName": f"|- {name}", "regionName": config.region,
                     "zoneState": f"{n_free:04d} / {n_max:04d} {spec.cpus:4d} {spec.memory_mib:6d} {spec.disk_gb:5d}"})
    return rows


INSTANCE_TYPE_FILTERS = frozenset({"instance-type", "vcpu-info.default-vcpus", "memory-info.size-in-mib",
                                   "instance-storage-info.total-size-in-gb", "current-generation"})


async def describe_instance_types(ctx: Context) -> dict:
    types = ctx.service.config.instance_types
    wanted = ctx.params.list("InstanceType")
    for name in wanted:
        if name not in types:
            raise Ec2Error("InvalidInstanceType", f"The following supplied instance types do not exist: [{name}]")
    flts = filters(ctx.params, INSTANCE_TYPE_FILTERS, tags=False)
    items = []
    for name, spec in types.items():
        row = {"instance-type": name, "vcpu-info.default-vcpus": spec.cpus, "memory-info.size-in-mib": spec.memory_mib,
               "instance-storage-info.total-size-in-gb": spec.disk_gb, "current-generation": "true"}
        if wanted and name not in wanted or not all(f.matches(row[f.name]) for f in flts):
            continue
        items.append({
            "instanceType": name, "currentGeneration": True, "freeTierEligible": False,
            "supportedUsageClasses": ["on-demand"], "supportedRootDeviceTypes": ["instance-store"],
            "supportedVirtualizationTypes": ["hvm"], "bareMetal": False, "hypervisor": "kvm",
            "processorInfo": {"supportedArchitectures": ["x86_64"]},
            "vCpuInfo": {"defaultVCpus": spec.cpus, "defaultCores": spec.cpus, "defaultThreadsPerCore": 1},
            "memoryInfo": {"sizeInMiB": spec.memory_mib},
            "instanceStorageSupported": True,
            "instanceStorageInfo": {"totalSizeInGB": spec.disk_gb,
                                    "disks": [{"sizeInGB": spec.disk_gb, "count": 1, "type": "hdd"}]},
        })
    return {"instanceTypeSet": items}


async def describe_service_certificates(ctx: Context) -> dict:
    from .xml import Members

    ca = ctx.service.ca
    fmt = (ctx.params.get("Format") or "pem").lower()
    digest = ctx.params.get("FingerprintDigest") or "SHA-256"
    if fmt not in ("pem", "der"):
        raise invalid("Format", fmt, "expected pem or der")
    if digest not in ("SHA-256", "SHA-1"):
        raise invalid("FingerprintDigest", digest, "expected SHA-256 or SHA-1")
    body = ca.cert_pem if fmt == "pem" else \
        base64.b64encode(ca.cert.public_bytes(serialization.Encoding.DER)).decode()
    return {"serviceCertificates": Members([{
        "serviceType": "compute", "certificateUsage": "image-bundling", "certificateFormat": fmt,
        "certificateFingerprintDigest": digest, "certificateFingerprint": ca.fingerprint(digest),
        "certificate": body}])}


ACTIONS = {
    "DescribeRegions": describe_regions,
    "DescribeAvailabilityZones": describe_availability_zones,
    "DescribeInstanceTypes": describe_instance_types,
    "DescribeServiceCertificates": describe_service_certificates,
}
