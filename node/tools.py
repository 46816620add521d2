"""The node's host tools (ip, bridge, nft, ...) run as argv lists through asyncio
subprocesses (never a shell), and the error they raise: shared by network.py,
segments.py and firewall.py."""

from __future__ import annotations

import asyncio

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
