"""``runs settings``: every setting's effective value and where it came from (the environment,
the .env file, or the default), grouped as ``runs.settings`` groups them, secrets masked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import typer
from dotenv import dotenv_values
from pydantic import AliasChoices, SecretStr
from rich.console import Console
from rich.table import Table

from runs.settings import Settings

MASK = "********"
console = Console()


def settings_command(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show every setting's effective value and its source (secrets masked)."""
    rows = effective_settings(Settings())
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    group = None
    table = Table("variable", "value", "from", box=None, pad_edge=False, show_edge=False)
    for row in rows:
        if row["group"] != group:
            group = row["group"]
            table.add_row(f"[bold]{group}[/bold]", "", "")
        table.add_row(f"  {row['variable']}", row["value"], row["source"])
    console.print(table, soft_wrap=True)


def effective_settings(settings: Settings) -> list[dict[str, str]]:
    """One row a setting: its group, variable, shown value, source and description."""
    file_values = _dotenv()
    rows = []
    for name, field in Settings.model_fields.items():
        names = _variables(name, field.validation_alias)
        source = "default"
        if any(n in os.environ for n in names):
            source = "environment"
        elif any(n in file_values for n in names):
            source = ".env"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        rows.append(
            {
                "group": str(extra.get("group", "")),
                "variable": names[0],
                "value": shown(getattr(settings, name)),
                "source": source,
                "description": field.description or "",
            }
        )
    return rows


def shown(value: Any) -> str:
    """A value as it may be shown: a secret masked, a URL without its password."""
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else ""
    if value is None:
        return ""
    if isinstance(value, str) and "://" in value:
        return _without_password(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{parts.username or ''}:{MASK}@{host}{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _variables(name: str, alias: Any) -> list[str]:
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"RUNS_{name.upper()}"]


def _dotenv() -> dict[str, str | None]:
    env_file = Settings.model_config.get("env_file")
    if isinstance(env_file, str) and Path(env_file).is_file():
        return dotenv_values(env_file)
    return {}
