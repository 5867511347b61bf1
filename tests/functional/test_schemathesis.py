"""Property-based API testing from /v1/openapi.json (schemathesis): random valid requests to every
operation, and random invalid ones to the core operations, never get a 5xx, and every answer
matches the documented schema (the error shape included)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import Case, DataGenerationMethod
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.functional.conftest import Client, LiveServer

schemathesis.experimental.OPEN_API_3_1.enable()

# the API v1 core (identity, flavors, keypairs, server groups, quotas, hosts, meta) gets more examples and
# invalid bodies and queries too; the routes of later layers get a lighter pass to bound the run time
CORE_PATHS = (r"^/(healthz|metrics|v1$|v1/(openapi|auth|catalog|projects|users|roles|flavors|keypairs"
              r"|server-groups|quotas|hosts))")
CHECKS = (not_a_server_error, response_schema_conformance)
# bounded so the whole run stays well under a minute as routes are added (generation dominates)
SETTINGS = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None,
            "phases": [Phase.explicit, Phase.generate, Phase.shrink]}


def _schema(live: LiveServer, method: DataGenerationMethod) -> Any:
    doc = Client(live.url).get("/v1/openapi.json")
    schema = schemathesis.from_dict(doc, base_url=live.url, data_generation_methods=[method])
    # revoking the caller's own token would leave the rest of the run unauthenticated; adding a cluster
    # member first connects to the generated URL, which may name any host (tests/functional/test_cluster.py)
    skip = {("DELETE", "/v1/auth/token"), ("POST", "/v1/cluster/members")}
    for path, ops in doc["paths"].items():
        for verb, op in ops.items():
            if "text/event-stream" in op["responses"].get("200", {}).get("content", {}):
                skip.add((verb.upper(), path))  # an event stream never ends: no response to check
            if method == DataGenerationMethod.negative and ("{" in path or not (op.get("parameters") or
                                                                                 "requestBody" in op)):
                # nothing to make invalid (any string is a valid path parameter)
                skip.add((verb.upper(), path))
    for verb, path in sorted(skip):
        schema = schema.exclude(method=verb, path=path)
    return schema


@pytest.fixture(scope="module")
def core_schema(live: LiveServer) -> Any:
    return _schema(live, DataGenerationMethod.positive).include(path_regex=CORE_PATHS)


@pytest.fixture(scope="module")
def other_schema(live: LiveServer) -> Any:
    return _schema(live, DataGenerationMethod.positive).exclude(path_regex=CORE_PATHS)


@pytest.fixture(scope="module")
def invalid_schema(live: LiveServer) -> Any:
    return _schema(live, DataGenerationMethod.negative).include(path_regex=CORE_PATHS)


def _call(case: Case, admin: Client) -> None:
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {admin.token}"}
    case.call_and_validate(checks=CHECKS, timeout=30)


@schemathesis.from_pytest_fixture("core_schema").parametrize()
@settings(max_examples=15, **SETTINGS)  # type: ignore[arg-type]
def test_core_requests_get_no_server_error_and_match_the_schema(case: Case, admin: Client) -> None:
    _call(case, admin)


@schemathesis.from_pytest_fixture("other_schema").parametrize()
@settings(max_examples=3, **SETTINGS)  # type: ignore[arg-type]
def test_other_requests_get_no_server_error_and_match_the_schema(case: Case, admin: Client) -> None:
    _call(case, admin)


@schemathesis.from_pytest_fixture("invalid_schema").parametrize()
@settings(max_examples=4, **SETTINGS)  # type: ignore[arg-type]
def test_invalid_requests_get_no_server_error_and_match_the_schema(case: Case, admin: Client) -> None:
    _call(case, admin)
