"""What the API routes reach: the services the daemon composed, under one typed app key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hvd.catalog.service import Catalog
from hvd.config import Config
from hvd.identity.policy import Policy
from hvd.identity.service import IdentityService


@dataclass
class ApiServices:
    config: Config
    catalog: Catalog
    identity: IdentityService
    policy: Policy
    api_url: str
    extra: dict[str, Any] = field(default_factory=dict)  # services added by later layers (compute, net)


SERVICES = web.AppKey("hvd.services", ApiServices)


def services(request: web.Request) -> ApiServices:
    return request.app[SERVICES]
