"""The node's host tools (ip, bridge, nft, ...) run as argv lists through asyncio
subprocesses (never a shell), and the error they raise: shared by network.py,
segments.py and firewall.py."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from pathlib import Path

from .errors import NodeError


class NetworkError(NodeError):
    status = 500
    code = "NetworkError"


async def run_tool(*argv: str, stdin: bytes | None = None, check: bool = True) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin)
    out_s, err_s = out.decode(errors="replace"), err.decode(errors="replace").strip()
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(argv[:4])} ... failed ({proc.returncode}): {err_s}")
    return proc.returncode, out_s, err_s


def send_gratuitous_arp(dev: str, ip: str) -> None:
    """Announce that `ip` is now at this host's `dev` (a gratuitous ARP request,
    RFC 5227's announcement): neighbours that cached the old holder of a moved elastic IP
    update their entry at once instead of when it expires. Blocking; run in a thread."""
    mac = bytes.fromhex(Path(f"/sys/class/net/{dev}/address").read_text().strip().replace(":", ""))
    addr = ipaddress.IPv4Address(ip).packed
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, addr, b"\0" * 6, addr)
    frame = b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + arp
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((dev, 0))
        s.send(frame)
