"""compose.yaml cannot be started here (no Docker engine), so it is validated instead."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from runs.cli.main import app
from runs.settings import Settings

EXPECTED = {"postgres", "redis", "migrate", "api", "worker", "scheduler", "flower"}


@pytest.fixture(scope="module")
def compose(repo_root: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((repo_root / "compose.yaml").read_text())
    return loaded


def test_compose_has_the_whole_stack_with_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= EXPECTED
    for name in ("postgres", "redis", "api", "scheduler", "flower"):
        assert "test" in services[name]["healthcheck"], name
    for name, service in services.items():
        assert "image" in service or "build" in service, name


def test_compose_dependencies_exist_and_migrations_run_first(compose: dict[str, Any]) -> None:
    services = compose["services"]
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert spec["condition"] in conditions
    for name in ("api", "worker", "scheduler"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )


def test_compose_commands_are_real_runs_commands(compose: dict[str, Any]) -> None:
    runner = CliRunner()
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command or command[0] != "runs":
            continue
        words = command[1:] if isinstance(command, list) else shlex.split(command)[1:]
        subcommand = [w for w in words if not w.startswith("-")][:2]
        result = runner.invoke(app, [*subcommand[: 2 if subcommand[0] in ("db",) else 1], "--help"])
        assert result.exit_code == 0, f"{name}: {command}: {result.output}"


def test_compose_points_settings_at_shipped_config_files(
    compose: dict[str, Any], repo_root: Path
) -> None:
    env = compose["services"]["api"]["environment"]
    for key in ("RUNS_ROUTING_FILE", "RUNS_LOGGING_CONFIG"):
        assert (repo_root / env[key].removeprefix("/app/")).is_file(), key


def test_the_example_env_documents_every_setting(repo_root: Path) -> None:
    documented = (repo_root / "config" / "example.env").read_text()
    missing = [name for name in Settings.model_fields if f"RUNS_{name.upper()}=" not in documented]
    assert missing == []
