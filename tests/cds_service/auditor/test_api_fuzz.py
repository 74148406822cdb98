"""schemathesis on the auditor API's own OpenAPI document, on SQLite and PostgreSQL: whatever the
parameters, valid for the document or not, no answer is a server error. Bounded (a few dozen cases per operation) to keep CI short;
`bench/fuzz_and_faults.py` runs the long version."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.cds_service.audit_log import AuditLog
from tests.cds_service.auditor.test_pages import location, log_in

EXAMPLES = 30


def test_no_auditor_api_operation_answers_a_server_error(audit_log_factory: Callable[..., AuditLog], database_url: str) -> None:
    log = audit_log_factory(database_url=database_url)
    with httpx.Client(base_url=log.running.base_url, timeout=20, follow_redirects=False) as client:
        assert location(log_in(client, log.username, log.password)) == "/audit/"
        spec = client.get("/audit/api/openapi.json").json()
        schema = schemathesis.openapi.from_dict(spec)
        failures: list[str] = []
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 5

        for operation, mode in itertools.product(operations, list(GenerationMode)):

            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=operation.as_strategy(mode))
            def call(case: Any) -> None:
                kwargs = case.as_transport_kwargs(base_url=log.running.base_url)
                response = client.request(kwargs["method"], kwargs["url"], params=kwargs.get("params"))
                if response.status_code >= 500:
                    failures.append(f"{case.method} {kwargs['url']} {kwargs.get('params')}: {response.status_code}")

            try:
                call()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # an operation without parameters has no invalid input
        assert failures == []
