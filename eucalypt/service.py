"""What every eucalypt service process shares: settings resolution, the event loop, and
running a server object until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path


def resolve_settings(args, defaults: dict, env_prefix: str) -> dict:
    """Defaults < --config TOML < environment (PREFIX_NAME) < flags."""
    settings = dict(defaults)
    if getattr(args, "config", None):
        import tomllib
        with open(args.config, "rb") as f:
            loaded = tomllib.load(f)
        unknown = set(loaded) - set(defaults)
        if unknown:
            raise SystemExit(f"{args.config}: unknown settings {', '.join(sorted(unknown))}")
        settings.update(loaded)
    for name, default in defaults.items():
        env = os.environ.get(f"{env_prefix}_{name.upper()}")
        if env is not None:
            settings[name] = env.split(",") if isinstance(default, list) else env
        flag = getattr(args, name, None)
        if flag is not None:
            settings[name] = flag
    for name, default in defaults.items():
        if isinstance(default, (int, float)) and settings[name] is not None:
            settings[name] = type(default)(settings[name])
    for name in ("data_dir", "users", "service_secret_file"):
        if settings.get(name) is not None:
            settings[name] = Path(settings[name])
    return settings


async def serve_until_signalled(server, name: str) -> int:
    """Run a started server object until SIGINT or SIGTERM, then stop it cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print(f"{name}: shutting down", flush=True)
    await server.stop()
    return 0


def run_service(coro) -> int:
    """Run a service's main coroutine, on uvloop where it is installed (it measurably
    cuts per-request overhead: see walrus's small-object figures in bench/)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
