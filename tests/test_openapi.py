"""The OpenAPI document says what the API answers: every problem status an operation can
return, with one Problem schema and the problem+json media type, and the bearer scheme."""

from __future__ import annotations

from typing import Any

import pytest

from runs.api.app import create_app
from tests.conftest import base_settings

PROBLEM = {"$ref": "#/components/schemas/ProblemOut"}

# What each operation can answer besides its success (design.md invariant 8; §11 of the
# contract), as the tests of each route show.
EXPECTED_PROBLEMS = {
    ("post", "/runs"): {400, 401, 404, 413, 422, 500},
    ("get", "/runs/{run_id}"): {401, 404, 500},
    ("get", "/runs/{run_id}/events"): {400, 401, 404, 500},
    ("post", "/runs/{run_id}/cancel"): {401, 404, 422, 500},
    ("post", "/runs/{run_id}/approvals"): {400, 401, 404, 409, 413, 500},
    ("post", "/runs/{run_id}/signals"): {400, 401, 404, 409, 413, 500},
    ("get", "/projects/{project_reference}/runs"): {400, 401, 404, 500},
    ("get", "/definitions"): {401, 500},
    ("get", "/readyz"): {503},
    ("get", "/healthz"): set(),
}


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    document: dict[str, Any] = create_app(base_settings(max_page_size=50)).openapi()
    return document


def test_every_operation_documents_exactly_the_problems_it_answers(
    openapi: dict[str, Any],
) -> None:
    operations = {
        (method, path): operation
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
    }
    assert set(operations) == set(EXPECTED_PROBLEMS)
    for key, operation in operations.items():
        problems = {int(s) for s in operation["responses"] if int(s) >= 400}
        assert problems == EXPECTED_PROBLEMS[key], key
        for status in problems:
            content = operation["responses"][str(status)]["content"]
            assert content == {"application/problem+json": {"schema": PROBLEM}}, (key, status)


def test_validation_errors_are_documented_as_400_problems_not_the_default_422(
    openapi: dict[str, Any],
) -> None:
    schemas = openapi["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert {"type", "title", "status", "detail"} <= set(schemas["ProblemOut"]["required"])


def test_authenticated_operations_declare_the_bearer_scheme(openapi: dict[str, Any]) -> None:
    assert openapi["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, item in openapi["paths"].items():
        for operation in item.values():
            secured = operation.get("security") == [{"HTTPBearer": []}]
            assert secured == (path not in ("/healthz", "/readyz")), path


def test_query_parameters_state_their_bounds_and_patterns(openapi: dict[str, Any]) -> None:
    events = openapi["paths"]["/runs/{run_id}/events"]["get"]["parameters"]
    after = next(p for p in events if p["name"] == "after_event_id")["schema"]
    assert (after["minimum"], after["maximum"]) == (0, 2**53 - 1)
    listing = openapi["paths"]["/projects/{project_reference}/runs"]["get"]["parameters"]
    by_name = {p["name"]: p["schema"] for p in listing}
    assert (by_name["limit"]["type"], by_name["limit"]["maximum"]) == ("integer", 50)
    assert "pending" in by_name["status"]["items"]["pattern"]
    assert by_name["parent_run_id"]["pattern"].startswith("^")
