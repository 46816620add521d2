"""What a handler gets: the parameters, who is asking, and the service's parts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..identity import Identity
from .params import Params

if TYPE_CHECKING:
    from ..server import ControlService


@dataclass
class Context:
    action: str
    params: Params
    identity: Identity
    request_id: str
    service: "ControlService"

    @property
    def account_id(self) -> str:
        return self.identity.account.id

    @property
    def store(self) -> Any:
        return self.service.store

    def now(self) -> float:
        return self.service.clock.now()
