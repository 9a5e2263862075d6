"""``GET /openapi.json`` describes every public route, and schemathesis holds the daemon to it:
requests generated from the description (valid and invalid bodies, headers, methods) never get a
5xx, and every answer's status, content type, headers and body match the description."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import checks

from conftest import UPSTREAM_ENV, upstream_config


def test_every_public_route_is_described(gw):
    from llmgw.server.app import STATE

    doc = httpx.get(gw.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    app = gw.extra["app"]
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.method != "*" and not r.resource.canonical.startswith("/admin")}
    described = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert routes == described
    assert app[STATE]["openapi"]  # rendered once, at start
    schemathesis.openapi.from_dict(doc).validate()  # a valid OpenAPI 3.1 document (its meta-schema)


@pytest.fixture
def api_schema(daemon_factory, upstream):
    d = daemon_factory(upstream_config(upstream, '\n[cache]\nmode = "exact"\n'), UPSTREAM_ENV)
    schema = schemathesis.openapi.from_url(d.url + "/openapi.json")
    schema.config.update(base_url=d.url, headers={"Authorization": f"Bearer {d.key}"})
    # explicit examples and generated cases, valid and invalid; not the exhaustive "coverage" phase
    # (a thousand boundary cases: the fuzz test in test_fuzz.py covers bad input more cheaply)
    schema.config.phases.update(phases=["examples", "fuzzing"])
    schema.config.generation.update(max_examples=6, deterministic=True)
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")

CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance]


@schema.parametrize()
@settings(max_examples=6, derandomize=True, database=None, deadline=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_the_daemon_keeps_to_its_openapi_description(case):
    # not positive_data_acceptance / negative_data_rejection: the validator knows more than a schema
    # can say (a model must be routable, nesting is bounded), so schema-valid bodies may get a typed 4xx
    case.call_and_validate(checks=CHECKS)
