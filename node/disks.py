"""Instance disks: the root disk, a qcow2 overlay over the cached raw base image
(qemu-img), and the per-instance scratch disks -- ephemeral (instance store) and swap --
as sparse raw files that cost no space until the guest writes.

Scratch disks are formatted the way EC2 hands them out, so a stock cloud image mounts
them without help: ephemeral as ext4 labelled "ephemeral0" (lazy inode-table and journal
initialisation, so formatting a large sparse file writes only a few MiB), swap with
mkswap labelled "swap". Without the tool (mkfs.ext4 / mkswap) the disk stays raw and a
warning says so.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from .errors import HypervisorError

log = logging.getLogger("eucalypt.node.disks")


async def _run(tool: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(tool, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    return proc.returncode, err.decode(errors="replace").strip()


async def create_overlay(base: Path, overlay: Path, *, qemu_img: str | None = None) -> None:
    """`qemu-img create -f qcow2 -F raw -b BASE OVERLAY` (copy-on-write: milliseconds,
    whatever the image's size). Replaces a leftover overlay of a failed launch."""
    tool = qemu_img or shutil.which("qemu-img")
    if tool is None:
        raise HypervisorError("qemu-img is missing (Debian: apt-get install qemu-utils)")
    overlay.parent.mkdir(parents=True, exist_ok=True)
    overlay.unlink(missing_ok=True)
    code, err = await _run(tool, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base.resolve()), str(overlay))
    if code != 0:
        overlay.unlink(missing_ok=True)
        raise HypervisorError(f"qemu-img create {overlay.name} failed: {err}")


def _sparse_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


async def create_scratch_disk(path: Path, size: int, kind: str) -> None:
    """A sparse raw disk of `size` bytes at `path`, formatted for `kind` ("ephemeral":
    ext4 labelled ephemeral0; "swap": swap space). Replaces a leftover file."""
    if kind not in ("ephemeral", "swap"):
        raise ValueError(f"unknown scratch disk kind {kind!r}")
    await asyncio.to_thread(_sparse_file, path, size)
    if kind == "swap":
        argv = ("mkswap", "-L", "swap", str(path))
    else:
        argv = ("mkfs.ext4", "-q", "-F", "-L", "ephemeral0", "-m", "0",
                "-E", "lazy_itable_init=1,lazy_journal_init=1", str(path))
    tool = shutil.which(argv[0]) or shutil.which(argv[0], path="/usr/sbin:/sbin")
    if tool is None:
        log.warning("%s is missing: the %s disk %s stays unformatted", argv[0], kind, path.name)
        return
    code, err = await _run(tool, *argv[1:])
    if code != 0:
        path.unlink(missing_ok=True)
        raise HypervisorError(f"{argv[0]} {path.name} failed: {err}")
