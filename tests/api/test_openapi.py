"""The OpenAPI document says what the API answers: every problem status an operation can
return, with one Problem schema and the problem+json media type, and the bearer scheme."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from runs.api.app import create_app
from runs.domain.definitions import Definition
from runs.domain.events import log_event, started_events
from runs.domain.runs import Outcome, RunRef, RunStatus
from runs.services.access import AccessService
from runs.services.attempts import AttemptService
from runs.services.catalog import DefinitionCatalog
from runs.streams.event_log import RedisEventLog
from tests.conftest import base_settings
from tests.support.api_support import Caller, new_caller
from tests.support.helpers import create_body
from tests.support.server_support import Server, serving
from tests.support.workflow_support import park

PROBLEM = {"$ref": "#/components/schemas/ProblemOut"}
# What the HTTP server can answer to any request: too slow, body or URL or head too large,
# too many connections.
ANY_REQUEST = {408, 413, 414, 431, 503}

# What each operation can answer besides its success (design.md invariant 8; §11 of the
# contract), as the tests of each route show.
EXPECTED_PROBLEMS = {
    ("post", "/runs"): {400, 401, 404, 413, 422, 500},
    ("get", "/runs/{run_id}"): {400, 401, 404, 500},
    ("get", "/runs/{run_id}/events"): {400, 401, 404, 500},
    ("get", "/runs/{run_id}/stream"): {400, 401, 404, 500},
    ("get", "/runs/{run_id}/nodes"): {400, 401, 404, 500},
    ("get", "/whoami"): {401, 500},
    ("post", "/runs/{run_id}/cancel"): {400, 401, 404, 422, 500},
    ("post", "/runs/{run_id}/approvals"): {400, 401, 404, 409, 413, 500},
    ("post", "/runs/{run_id}/signals"): {400, 401, 404, 409, 413, 500},
    ("get", "/projects/{project_reference}/runs"): {400, 401, 404, 500},
    ("get", "/definitions"): {401, 500},
    ("post", "/projects/{project_reference}/schedules"): {400, 401, 404, 413, 422, 500},
    ("get", "/projects/{project_reference}/schedules"): {400, 401, 404, 500},
    ("get", "/projects/{project_reference}/schedules/{schedule_id}"): {400, 401, 404, 500},
    ("patch", "/projects/{project_reference}/schedules/{schedule_id}"): {
        400,
        401,
        404,
        409,
        413,
        422,
        500,
    },
    ("delete", "/projects/{project_reference}/schedules/{schedule_id}"): {400, 401, 404, 500},
    ("post", "/projects/{project_reference}/schedules/{schedule_id}/runs"): {
        400,
        401,
        404,
        409,
        422,
        500,
    },
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
        assert problems == EXPECTED_PROBLEMS[key] | ANY_REQUEST, key
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


# -- schemathesis against a real server ----------------------------------------------------

# About two minutes on two cores, over 2,500 cases (the event stream's cases are fewer: each may
# read a stream for up to its request timeout).
FUZZ_EXAMPLES = int(os.environ.get("RUNS_TEST_SCHEMATHESIS_EXAMPLES", "100"))
FUZZ_SEED = os.environ.get("RUNS_TEST_SCHEMATHESIS_SEED", "20261203")


@pytest.mark.worker  # a real server process
@pytest.mark.timeout(600)
def test_schemathesis_finds_no_failure_over_every_operation(
    postgres_url: str, redis_url: str, pg_engine: sa.Engine, tmp_path: Path, repo_root: Path
) -> None:
    """Every default check of schemathesis, over every operation (examples, coverage,
    fuzzing, stateful), with known ids to reach past the 404s: 0 failures."""
    DefinitionCatalog(pg_engine, cache_seconds=0).register(
        [Definition(target="workflow:fuzzed", kind="workflow")]
    )
    access = AccessService(pg_engine)
    caller = new_caller(access, "fuzz")
    with serving(postgres_url, redis_url, tmp_path, repo_root) as server:
        run_ids = known_runs(server, caller, pg_engine)
        ended = [run_ids[1], finished_run(server, caller, pg_engine, redis_url)]
        dictionaries = {
            "projects": [caller.project.id, caller.project.slug],
            "runs": [*run_ids, ended[1]],
            "ended": ended,
            "targets": ["task:echo", "workflow:fuzzed"],
        }
        config = tmp_path / "schemathesis.toml"
        config.write_text(fuzz_config(repo_root, tmp_path, dictionaries))
        done = subprocess.run(
            [
                str(Path(sys.executable).with_name("st")),
                "--config-file",
                str(config),
                "run",
                f"{server.url}/openapi.json",
                "-H",
                f"Authorization: Bearer {caller.token}",
                "--seed",
                FUZZ_SEED,
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,  # its cache stays out of the repository
        )
    report = done.stdout + done.stderr
    (tmp_path / "schemathesis.log").write_text(report)
    failures = report[report.find("= FAILURES =") :] if "= FAILURES =" in report else report
    assert done.returncode == 0, failures[:12000]
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated is not None, report[-3000:]
    assert generated.group(1) == generated.group(2), report[-3000:]
    # Every operation of the document was tested: none was switched off by a filter.
    tested = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", report)
    assert tested is not None, report[-3000:]
    assert set(tested.groups()) == {str(len(EXPECTED_PROBLEMS))}, report[-3000:]
    assert "unhandled error" not in server.log()


def finished_run(server: Server, caller: Caller, engine: sa.Engine, redis_url: str) -> str:
    """A run that completed (its attempt recorded by hand: no worker consumes these jobs)."""
    with httpx.Client(base_url=server.url, headers=caller.headers) as client:
        run_id = str(client.post("/runs", json=create_body(caller.project)).json()["run"]["run_id"])
    events = RedisEventLog.from_url(redis_url, ttl_seconds=600)
    try:
        attempts = AttemptService(engine, dispatcher=_NoDispatch(), events=events)
        claimed = attempts.claim(RunRef(caller.project.id, run_id), owner="fuzz", lease_seconds=60)
        assert claimed is not None
        assert attempts.open_attempt(claimed, started_events(claimed.target), owner="fuzz")
        assert attempts.emit(claimed.ref, [log_event("line")])
        done = Outcome(RunStatus.COMPLETED, output={"ok": True}, exit_code=0)
        assert attempts.finish(claimed, done, owner="fuzz")
    finally:
        events.client.close()
    return run_id


class _NoDispatch:
    def dispatch(self, *_: object, **__: object) -> None:
        raise AssertionError("nothing is sent")


def known_runs(server: Server, caller: Caller, engine: sa.Engine) -> list[str]:
    """A pending run, a cancelled one, and a workflow run parked on its waits."""
    with httpx.Client(base_url=server.url, headers=caller.headers) as client:
        ids = []
        for _ in range(2):
            created = client.post("/runs", json=create_body(caller.project))
            ids.append(created.json()["run"]["run_id"])
        client.post(f"/runs/{ids[1]}/cancel")
        workflow = {
            "kind": "workflow",
            "owner": {"kind": "project", "id": caller.project.id},
            "request": {"target": "workflow:fuzzed", "workflow_id": "fuzzed"},
        }
        parked = client.post("/runs", json=workflow).json()["run"]["run_id"]
    park(engine, parked)
    return [*ids, parked]


def fuzz_config(repo_root: Path, directory: Path, dictionaries: dict[str, list[str]]) -> str:
    """tests/api/schemathesis.toml, plus dictionaries of ids that exist."""
    text = f"[generation]\nmax-examples = {FUZZ_EXAMPLES}\n\n"
    text += (repo_root / "tests" / "api" / "schemathesis.toml").read_text()
    for name, values in dictionaries.items():
        path = directory / f"{name}.dict"
        path.write_text("".join(f'"{value}"\n' for value in values))
        text += f'\n[dictionaries.{name}]\nfrom-file = "{path}"\n'
    return (
        text
        + """
[parameters]
"path.project_reference" = { dictionary = "projects", probability = 0.7 }
"path.run_id" = { dictionary = "runs", probability = 0.7 }
"body.owner.id" = { dictionary = "projects", probability = 0.7 }
"body.request.target" = { dictionary = "targets", probability = 0.7 }
"""
    )
