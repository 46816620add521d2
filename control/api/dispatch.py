"""Action name -> handler: the whole EC2 surface control answers, in one table.

A handler is ``async def handler(ctx: Context) -> dict`` (the response body, see xml.py);
it raises ``Ec2Error`` for anything the caller got wrong. An action not listed here is
answered with InvalidAction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from . import addresses, cloud, groups, images, instances, keypairs, tags
from .context import Context

Handler = Callable[[Context], Awaitable[dict]]

ACTIONS: dict[str, Handler] = {**keypairs.ACTIONS, **groups.ACTIONS, **tags.ACTIONS, **cloud.ACTIONS,
                               **images.ACTIONS, **instances.ACTIONS, **addresses.ACTIONS}


def handler_for(action: str) -> Handler | None:
    return ACTIONS.get(action)
