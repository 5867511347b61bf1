"""`hvd api version|health|openapi|metrics`: what the API says about itself (no token needed except
for /metrics from outside [api] metrics_from)."""

from __future__ import annotations

import argparse
import json
import sys

from hvd.cli.commands import Action, Registry
from hvd.cli.http import Session
from hvd.cli.output import print_one


def api_version(session: Session, args: argparse.Namespace) -> None:
    got = session.call("GET", "/v1", auth=False)
    print_one({"version": got["version"], **{f"link_{k}": v for k, v in got["links"].items()}}, args)


def api_health(session: Session, args: argparse.Namespace) -> None:
    got = session.call("GET", "/healthz", auth=False)
    got.pop("error", None)  # an unhealthy answer repeats its reasons as an error body
    print_one(got, args)


def api_openapi(session: Session, args: argparse.Namespace) -> None:
    sys.stdout.write(json.dumps(session.call("GET", "/v1/openapi.json", auth=False), indent=2) + "\n")


def api_metrics(session: Session, args: argparse.Namespace) -> None:
    # loopback clients read /metrics without a token; others need one with host:read
    text = session.call("GET", "/metrics", auth=bool(session.token or session.username))
    sys.stdout.write(text if isinstance(text, str) else json.dumps(text))


def register_meta(registry: Registry) -> None:
    registry.register_action("api", Action("version", "the API version and its links", api_version,
                                           operations=("GET /v1",)), "what the API says about itself")
    registry.register_action("api", Action("health", "liveness, leader and the state of each loop", api_health,
                                           operations=("GET /healthz",)))
    registry.register_action("api", Action("openapi", "print the OpenAPI document", api_openapi, output=False,
                                           operations=("GET /v1/openapi.json",)))
    registry.register_action("api", Action("metrics", "print the Prometheus metrics", api_metrics, output=False,
                                           operations=("GET /metrics",)))
