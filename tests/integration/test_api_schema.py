"""Property-based tests of the whole API from its own OpenAPI spec: whatever schemathesis
sends (valid, malformed, boundary values), the server never answers with a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from support.serverkit import make_site
from vmvault.server.app import create_app


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Any:
    site = make_site(tmp_path_factory.mktemp("schema"))
    # Only the API: no background jobs, so generated requests are the only load.
    site.config.worker = site.config.scheduler = site.config.alerts = False
    return site


def test_no_request_makes_the_server_fail(site: Any) -> None:
    app = create_app(site.config)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app, headers=site.auth("reader"))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    checked: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=20,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def no_server_error(case: Any) -> None:
            for role in ("admin", "reader"):
                response = case.call(headers=site.auth(role))
                assert response.status_code < 500, (role, case.method, case.path, response.text)
                if response.status_code >= 400:
                    body = response.json()
                    assert set(body["error"]) >= {"code", "message"}, body

        no_server_error()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert "POST /api/v1/restores" in checked and "PUT /api/v1/inventory" in checked
