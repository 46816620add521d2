"""What this host offers: cores, memory, disk (from the host, each overridable)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Resources:
    cores: int
    memory_mib: int
    disk_bytes: int


def host_memory_mib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)


def host_resources(data_dir: Path, *, cores: int | None = None, memory_mib: int | None = None,
                   disk_bytes: int | None = None) -> Resources:
    st = os.statvfs(data_dir)
    return Resources(cores=cores or os.cpu_count() or 1, memory_mib=memory_mib or host_memory_mib(),
                     disk_bytes=disk_bytes or st.f_blocks * st.f_frsize)
