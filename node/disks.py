"""Instance root disks: a qcow2 overlay over the cached raw base image (qemu-img)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from .errors import HypervisorError


async def create_overlay(base: Path, overlay: Path, *, qemu_img: str | None = None) -> None:
    """`qemu-img create -f qcow2 -F raw -b BASE OVERLAY` (copy-on-write: milliseconds,
    whatever the image's size). Replaces a leftover overlay of a failed launch."""
    tool = qemu_img or shutil.which("qemu-img")
    if tool is None:
        raise HypervisorError("qemu-img is missing (Debian: apt-get install qemu-utils)")
    overlay.parent.mkdir(parents=True, exist_ok=True)
    overlay.unlink(missing_ok=True)
    proc = await asyncio.create_subprocess_exec(
        tool, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base.resolve()), str(overlay),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        overlay.unlink(missing_ok=True)
        raise HypervisorError(f"qemu-img create {overlay.name} failed: {err.decode(errors='replace').strip()}")
