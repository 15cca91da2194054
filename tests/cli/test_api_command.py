"""`runs api`'s options reach the server: ``--workers`` over RUNS_API_WORKERS over 1, and the
HTTP limits in a form uvicorn can pickle to each of its processes (the real processes:
tests/api/test_api_workers.py)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from typer.testing import CliRunner

from runs.api import server
from runs.api.server import HttpLimits, LimitedHttpProtocol, protocol_factory
from runs.cli.main import app
from runs.settings import Settings


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(server, "serve", lambda settings, **options: calls.append(options))
    monkeypatch.delenv("RUNS_API_WORKERS", raising=False)
    return calls


@pytest.mark.parametrize(
    ("argv", "env", "workers"),
    [
        ([], {}, 1),
        ([], {"RUNS_API_WORKERS": "3"}, 3),
        (["--workers", "2"], {"RUNS_API_WORKERS": "3"}, 2),
    ],
)
def test_workers_come_from_the_option_then_the_setting(
    served: list[dict[str, Any]], argv: list[str], env: dict[str, str], workers: int
) -> None:
    result = CliRunner().invoke(app, ["api", "--host", "127.0.0.1", "--port", "0", *argv], env=env)
    assert result.exit_code == 0, result.output
    assert served == [{"host": "127.0.0.1", "port": 0, "workers": workers}]


def test_zero_workers_is_refused(served: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(app, ["api", "--workers", "0"])
    assert result.exit_code != 0 and served == []
    with pytest.raises(ValueError, match="api_workers"):
        Settings(api_workers=0)


def test_the_protocol_factory_pickles_with_its_limits() -> None:
    limits = HttpLimits.from_settings(Settings(http_max_url_bytes=2048))
    carried = pickle.loads(pickle.dumps(protocol_factory(limits)))
    assert carried.func is LimitedHttpProtocol
    assert carried.keywords == {"limits": limits}
