"""Where a client's API URL, token and project come from: the arguments, else the
environment (``RUNS_*``, or the names the Veryfront client reads), else — for the CLI — the
``.runs/dev.json`` that ``runs dev`` writes, in this folder or the nearest parent. Without a
project, the clients use the token's own (``GET /whoami``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runs.client.errors import ConfigurationError

DEV_INFO = Path(".runs") / "dev.json"
API_URL_VARIABLES = ("RUNS_API_URL", "VERYFRONT_API_BASE_URL", "VERYFRONT_API_URL")
TOKEN_VARIABLES = ("RUNS_API_TOKEN", "VERYFRONT_API_TOKEN")
PROJECT_VARIABLES = ("RUNS_PROJECT", "VERYFRONT_PROJECT_ID", "VERYFRONT_PROJECT_SLUG")


@dataclass(frozen=True)
class ClientConfig:
    api_url: str
    auth_token: str
    project_reference: str | None


def resolve_config(
    api_url: str | None = None,
    auth_token: str | None = None,
    project_reference: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    dev_info: bool = False,
) -> ClientConfig:
    """Each setting from its argument, else the first variable of the environment that has
    it, else (``dev_info``) the dev file nearest the current folder."""
    env = os.environ if environ is None else environ
    api_url = api_url or _first(env, API_URL_VARIABLES)
    auth_token = auth_token or _first(env, TOKEN_VARIABLES)
    project_reference = project_reference or _first(env, PROJECT_VARIABLES)
    if dev_info and not (api_url and auth_token and project_reference):
        found = find_dev_info()
        if found is not None:
            info = json.loads(found.read_text(encoding="utf-8"))
            api_url = api_url or info.get("api_url")
            auth_token = auth_token or info.get("token")
            project_reference = project_reference or info.get("project_id")
    if not api_url:
        raise ConfigurationError(
            "no API URL: pass api_url or set RUNS_API_URL"
            + (f" (or run where `runs dev` wrote {DEV_INFO})" if dev_info else "")
        )
    if not auth_token:
        raise ConfigurationError(
            "no API token: pass auth_token or set RUNS_API_TOKEN"
            + (f" (or run where `runs dev` wrote {DEV_INFO})" if dev_info else "")
        )
    return ClientConfig(api_url.rstrip("/"), auth_token, project_reference)


def find_dev_info(start: Path | None = None) -> Path | None:
    """``.runs/dev.json`` in ``start`` (default: the current folder) or its nearest parent."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / DEV_INFO
        if candidate.is_file():
            return candidate
    return None


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if env.get(name):
            return env[name]
    return None
