"""Every ``runs`` help page lists flags as flags: no value placeholder such as ``<bool>``."""

from __future__ import annotations

from collections.abc import Iterator

import typer
from typer.testing import CliRunner

from runs.cli.main import app


def command_paths(command: object, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from command_paths(sub, (*path, name))


def test_no_help_page_shows_a_value_after_a_flag() -> None:
    runner = CliRunner()
    paths = list(command_paths(typer.main.get_command(app)))
    assert ("schedules", "list") in paths and ("dev",) in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, (path, result.output)
        assert "--help" in result.output, path
        assert "<bool>" not in result.output, (path, result.output)
