"""The libvirt domain XML of an instance (pure: a DomainSpec in, a string out).

The root disk (the instance's qcow2 overlay over the cached base image, virtio, vda),
then the instance's scratch disks (raw ephemeral and swap files, vdb, vdc, ...), direct
kernel boot when a kernel (and ramdisk) are given, the serial console written to a log
file (what `console output` returns), and one tap per instance on the configured
bridge. Tap names never start with "vnet": libvirt reserves that prefix for names it
generates and would rename ours. The instance's images are recorded in <metadata>
under our namespace, so a restarted agent can tell our domains from others.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

NAMESPACE = "https://eucalypt.dev/xmlns/node/1"
_IFNAMSIZ = 15


@dataclass(frozen=True, slots=True)
class DomainSpec:
    name: str                       # the instance id
    vcpus: int
    memory_mib: int
    disk_path: str                  # qcow2 overlay
    console_log: str
    domain_type: str = "qemu"       # "kvm" when /dev/kvm is usable
    kernel: str | None = None
    ramdisk: str | None = None
    cmdline: str = "root=/dev/vda console=ttyS0"
    bridge: str | None = None       # no bridge: no network interface
    mac: str | None = None
    tap: str | None = None
    images: tuple[tuple[str, str], ...] = ()   # (role, image id): machine/kernel/ramdisk
    scratch_disks: tuple[str, ...] = ()         # raw files, attached in order as vdb, vdc, ...
    arch: str = "x86_64"


def tap_name(instance_id: str) -> str:
    """A tap device name for the instance: "tap" + its hex id when that fits in IFNAMSIZ,
    else "eu" + a digest; never the libvirt-reserved "vnet" prefix."""
    suffix = re.sub(r"[^0-9a-zA-Z]", "", instance_id.removeprefix("i-"))
    name = f"tap{suffix}"
    if len(name) > _IFNAMSIZ or not suffix:
        name = "eu" + hashlib.sha1(instance_id.encode()).hexdigest()[:_IFNAMSIZ - 2]
    return name


def mac_address(instance_id: str) -> str:
    """A stable, locally administered unicast MAC derived from the instance id."""
    d = hashlib.sha1(instance_id.encode()).digest()
    return "d0:0d:" + ":".join(f"{b:02x}" for b in d[:4])


def scratch_device(index: int) -> str:
    """The target of the index-th scratch disk: vdb, vdc, ... (vda is the root disk)."""
    return "vd" + "bcdefghijklmnopqrstuvwxyz"[index]


def domain_xml(spec: DomainSpec) -> str:
    a = quoteattr
    lines = [f"<domain type={a(spec.domain_type)}>",
             f"  <name>{escape(spec.name)}</name>",
             f"  <memory unit='MiB'>{int(spec.memory_mib)}</memory>",
             f"  <vcpu>{int(spec.vcpus)}</vcpu>",
             f"  <metadata><eu:instance xmlns:eu={a(NAMESPACE)}>"]
    for role, image_id in spec.images:
        lines.append(f"    <eu:image role={a(role)} id={a(image_id)}/>")
    lines.append("  </eu:instance></metadata>")
    lines.append("  <os>")
    lines.append(f"    <type arch={a(spec.arch)}>hvm</type>")
    if spec.kernel:
        lines.append(f"    <kernel>{escape(spec.kernel)}</kernel>")
        if spec.ramdisk:
            lines.append(f"    <initrd>{escape(spec.ramdisk)}</initrd>")
        lines.append(f"    <cmdline>{escape(spec.cmdline)}</cmdline>")
    else:
        lines.append("    <boot dev='hd'/>")
    lines.append("  </os>")
    lines.append("  <features><acpi/></features>")
    lines.append("  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>")
    lines.append("  <devices>")
    lines.append("    <disk type='file' device='disk'>")
    lines.append("      <driver name='qemu' type='qcow2' cache='none'/>")
    lines.append(f"      <source file={a(spec.disk_path)}/>")
    lines.append("      <target dev='vda' bus='virtio'/>")
    lines.append("    </disk>")
    for index, path in enumerate(spec.scratch_disks):
        lines.append("    <disk type='file' device='disk'>")
        lines.append("      <driver name='qemu' type='raw' cache='none'/>")
        lines.append(f"      <source file={a(path)}/>")
        lines.append(f"      <target dev={a(scratch_device(index))} bus='virtio'/>")
        lines.append("    </disk>")
    if spec.bridge:
        lines.append("    <interface type='bridge'>")
        lines.append(f"      <source bridge={a(spec.bridge)}/>")
        lines.append(f"      <target dev={a(spec.tap or tap_name(spec.name))}/>")
        lines.append(f"      <mac address={a(spec.mac or mac_address(spec.name))}/>")
        lines.append("      <model type='virtio'/>")
        lines.append("    </interface>")
    lines.append("    <serial type='file'>")
    lines.append(f"      <source path={a(spec.console_log)}/>")
    lines.append("      <target port='0'/>")
    lines.append("    </serial>")
    lines.append("    <console type='file'>")
    lines.append(f"      <source path={a(spec.console_log)}/>")
    lines.append("      <target type='serial' port='0'/>")
    lines.append("    </console>")
    lines.append("  </devices>")
    lines.append("</domain>")
    return "\n".join(lines) + "\n"


def parse_metadata(xml: str | None) -> dict[str, str]:
    """role -> image id from our <metadata> element as libvirt returns it ({} if none)."""
    if not xml:
        return {}
    import defusedxml.ElementTree as ET
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    return {el.get("role", ""): el.get("id", "") for el in root.iter() if el.tag.split("}")[-1] == "image"}
