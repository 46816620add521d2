"""The node agent's settings (one frozen dataclass; the CLI fills it)."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .fetcher import FetchPolicy

METADATA_PORT = 8776
HEARTBEAT_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class WalrusEndpoint:
    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    service_secret: str
    walrus: tuple[WalrusEndpoint, ...]
    host: str = "127.0.0.1"
    port: int = 8775
    control_url: str | None = None      # registration + heartbeat (registration.py); None: standalone
    advertise_url: str | None = None    # where control reaches us (None: http://host:port)
    heartbeat_interval: float = HEARTBEAT_INTERVAL  # until control's answer says otherwise
    cluster: str | None = None
    bucket: str = "eucalypt-images"
    hypervisor_uri: str = "qemu:///system"
    domain_type: str | None = None      # None: kvm if /dev/kvm is usable, else qemu
    bridge: str | None = None
    subnet: str | None = None           # the instances' IPv4 subnet on the bridge, e.g. 10.211.0.0/24
    manage_network: bool | None = None  # bridge + dnsmasq + nftables (network.py); None: when root
    metadata_host: str | None = None    # None: the gateway when the network is managed, else 127.0.0.1
    metadata_port: int = METADATA_PORT  # 0: any free port
    cache_limit: int = 16 << 30
    cache_high: float = 0.90
    cache_low: float = 0.75
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    cores: int | None = None            # resource overrides (None: from the host)
    memory_mib: int | None = None
    disk_bytes: int | None = None
    s3_connect_timeout: float = 5.0
    s3_read_timeout: float = 60.0
    tunnel_ip: str | None = None        # managed modes: the VXLAN endpoint (segments.py)
    uplink: str | None = None           # managed modes: the 802.1Q trunk, where the kernel has it
    public_interface: str | None = None  # elastic IPs held (/32) and announced here (firewall.py)

    def __post_init__(self) -> None:
        if self.subnet is not None:
            net = ipaddress.IPv4Network(self.subnet, strict=True)  # ValueError for a bad one
            if net.num_addresses < 4:
                raise ValueError(f"subnet {self.subnet} is too small (needs a gateway and a host)")
        if self.tunnel_ip is not None:
            ipaddress.IPv4Address(self.tunnel_ip)  # ValueError for a bad one
        for what, name in (("uplink", self.uplink), ("public interface", self.public_interface)):
            if name is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,15}", name):
                raise ValueError(f"{what} {name!r} is not an interface name")

    @property
    def network_managed(self) -> bool:
        """True when the agent sets up the bridge, DHCP and NAT itself (network.py)."""
        if not (self.bridge and self.subnet):
            return False
        return self.manage_network if self.manage_network is not None else os.geteuid() == 0

    @property
    def gateway(self) -> str | None:
        """The subnet's first host: the bridge's address and the instances' router."""
        if self.subnet is None:
            return None
        return str(next(ipaddress.IPv4Network(self.subnet).hosts()))

    @property
    def metadata_bind_host(self) -> str:
        if self.metadata_host:
            return self.metadata_host
        return self.gateway if self.network_managed else "127.0.0.1"
