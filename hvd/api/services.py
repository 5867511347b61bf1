"""What the API routes reach: the services the daemon composed, under one typed app key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hvd.catalog.service import Catalog
from hvd.config import Config
from hvd.health import Health
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
    health: Health = field(default_factory=Health)  # probes of the daemon's loops (besides the catalog's)


SERVICES = web.AppKey("hvd.services", ApiServices)


def services(request: web.Request) -> ApiServices:
    return request.app[SERVICES]
