"""The admin commands find the database `runs dev` made, from the project folder or below
it, and elsewhere say in one line what to set instead of creating an empty one."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from runs.cli.main import app
from runs.persistence import migrate


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("RUNS_DATABASE_URL", raising=False)
    return CliRunner()


def test_outside_a_project_folder_the_command_says_what_to_set_and_creates_nothing(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["projects", "list"])
    assert result.exit_code == 1
    assert "RUNS_DATABASE_URL" in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_below_the_project_folder_the_command_finds_its_database(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / ".runs" / "runs.db"
    migrate.upgrade(f"sqlite:///{database}")
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["projects", "create", "found-it"]).exit_code == 0
    below = tmp_path / "src" / "deeper"
    below.mkdir(parents=True)
    monkeypatch.chdir(below)
    listed = runner.invoke(app, ["projects", "list"])
    assert listed.exit_code == 0 and "found-it" in listed.output
    assert not (below / ".runs").exists()
