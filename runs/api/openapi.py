"""The OpenAPI document as the API really answers.

Routes declare the problems they can answer with ``problems(...)``; this module adds the one
Problem schema they refer to, drops the 422 validation answer the framework documents by
default (validation errors are 400 problems here), documents optional query parameters
without a ``null`` branch (a query string cannot carry one), and gives ``limit`` the
configured maximum.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from runs.api.errors import PROBLEM_JSON
from runs.schemas.common import ProblemOut

PROBLEM_REF = {"$ref": "#/components/schemas/ProblemOut"}


# What the HTTP server and the body-size limit can answer to any request, before a route runs
# (runs.api.server, runs.api.limits).
ANY_REQUEST = (408, 413, 414, 431, 503)


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that can answer these problem statuses."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}},
        }
        for status in statuses
    }


def install_openapi(app: FastAPI, *, max_page_size: int) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _tidy(schema, max_page_size=max_page_size)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]


def _tidy(schema: dict[str, Any], *, max_page_size: int) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    problem = ProblemOut.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(problem.pop("$defs", {}))
    components["ProblemOut"] = problem
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for status, response in problems(*ANY_REQUEST).items():
                responses.setdefault(str(status), response)
            validation = responses.get("422", {}).get("content", {}).get("application/json")
            if validation is not None:
                del responses["422"]
            for parameter in operation.get("parameters", []):
                _without_null(parameter)
                if parameter["name"] == "limit" and parameter["in"] == "query":
                    parameter["schema"]["maximum"] = max_page_size


def _without_null(parameter: dict[str, Any]) -> None:
    schema = parameter.get("schema", {})
    branches = schema.get("anyOf")
    if parameter.get("in") == "path" or branches is None:
        return
    kept = [b for b in branches if b.get("type") != "null"]
    if len(kept) == 1:
        del schema["anyOf"]
        schema.update(kept[0])
