"""`runs settings` shows every setting, what it is, where its value came from, and never a
secret."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runs.cli.main import app
from runs.settings import Settings


def test_every_setting_is_described_and_grouped() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert isinstance(field.json_schema_extra, dict), name
        assert field.json_schema_extra.get("group"), name


def test_runs_settings_names_each_source_and_masks_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("RUNS_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("RUNS_DEFAULT_QUEUE=from-the-file\n")
    monkeypatch.setenv("RUNS_DATABASE_URL", "postgresql+psycopg://runs:hunter2@db:5432/runs")
    monkeypatch.setenv("RUNS_FLOWER_BASIC_AUTH", "admin:hunter2")
    monkeypatch.setenv("RUNS_EVENT_STREAM_TTL_SECONDS", "120")  # the older name
    result = CliRunner().invoke(app, ["settings", "--json"])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    rows = {row["variable"]: row for row in json.loads(result.output)}
    assert len(rows) == len(Settings.model_fields)
    assert rows["RUNS_DATABASE_URL"]["source"] == "environment"
    assert rows["RUNS_DATABASE_URL"]["value"] == "postgresql+psycopg://runs:********@db:5432/runs"
    assert rows["RUNS_FLOWER_BASIC_AUTH"]["value"] == "********"
    assert rows["RUNS_DEFAULT_QUEUE"] == {**rows["RUNS_DEFAULT_QUEUE"], "value": "from-the-file"}
    assert rows["RUNS_DEFAULT_QUEUE"]["source"] == ".env"
    assert (
        rows["RUNS_STREAM_TTL_SECONDS"]["value"],
        rows["RUNS_STREAM_TTL_SECONDS"]["source"],
    ) == (
        "120",
        "environment",
    )
    assert rows["RUNS_LOG_LEVEL"]["source"] == "default"
    table = CliRunner().invoke(app, ["settings"])
    assert "storage and messaging" in table.output and "hunter2" not in table.output
