"""The node agent's settings (one frozen dataclass; the CLI fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .fetcher import FetchPolicy


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
    control_url: str | None = None      # for registration/heartbeat: not implemented yet, unused
    cluster: str | None = None
    bucket: str = "eucalypt-images"
    hypervisor_uri: str = "qemu:///system"
    domain_type: str | None = None      # None: kvm if /dev/kvm is usable, else qemu
    bridge: str | None = None
    cache_limit: int = 16 << 30
    cache_high: float = 0.90
    cache_low: float = 0.75
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    cores: int | None = None            # resource overrides (None: from the host)
    memory_mib: int | None = None
    disk_bytes: int | None = None
    s3_connect_timeout: float = 5.0
    s3_read_timeout: float = 60.0
