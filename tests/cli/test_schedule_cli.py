"""``runs schedules``: create, list, get, pause, resume, trigger and delete from a terminal."""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from runs.cli.main import app
from runs.domain.projects import Project
from runs.services.access import AccessService
from tests.support.redis_hygiene import own


@pytest.fixture
def pg_project(pg_engine: sa.Engine) -> Project:
    return AccessService(pg_engine).create_project(f"cli-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, postgres_url: str, redis_url: str) -> CliRunner:
    monkeypatch.setenv("RUNS_DATABASE_URL", postgres_url)
    monkeypatch.setenv("RUNS_REDIS_URL", redis_url)
    monkeypatch.setenv("RUNS_DEFAULT_QUEUE", own("schedule-cli"))
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, ["schedules", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_schedule_commands_drive_a_schedule_through_its_life(
    runner: CliRunner, pg_project: Project
) -> None:
    slug = pg_project.slug
    created = json.loads(
        invoke(
            runner,
            "create",
            slug,
            "--name",
            "nightly",
            "--target",
            "task:echo",
            "--cron",
            "0 3 * * mon-fri",
            "--timezone",
            "Europe/Berlin",
            "--config",
            '{"a": 1}',
            "--json",
        )
    )
    schedule_id = created["id"]
    assert (created["schedule"], created["config"]) == ("0 3 * * mon-fri", {"a": 1})
    listed = invoke(runner, "list", slug)
    assert schedule_id in listed  # never cut, however narrow the terminal
    assert json.loads(invoke(runner, "pause", slug, schedule_id, "--json"))["status"] == "paused"
    assert json.loads(invoke(runner, "resume", slug, schedule_id, "--json"))["status"] == "active"
    first = invoke(runner, "trigger", slug, schedule_id, "--idempotency-key", "k").strip()
    again = invoke(runner, "trigger", slug, schedule_id, "--idempotency-key", "k").strip()
    assert first == again and first.startswith("run_")
    assert json.loads(invoke(runner, "get", slug, schedule_id, "--json"))["run_count"] == 1
    invoke(runner, "delete", slug, schedule_id)
    missing = runner.invoke(app, ["schedules", "get", slug, schedule_id])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_a_bad_cron_is_refused_with_the_parsers_reason(
    runner: CliRunner, pg_project: Project
) -> None:
    result = runner.invoke(
        app,
        [
            "schedules",
            "create",
            pg_project.slug,
            "--name",
            "x",
            "--target",
            "task:echo",
            "--cron",
            "99 * * * *",
        ],
    )
    assert result.exit_code == 2
    assert "not a valid cron" in result.output
