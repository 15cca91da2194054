"""Retry loops wait out storage that is briefly unreachable, and nothing else."""

from __future__ import annotations

import pytest
import redis
import sqlalchemy as sa

from runs.services.transient import patiently


def test_storage_briefly_away_is_waited_out() -> None:
    failures: list[Exception] = [
        redis.ConnectionError("refused"),
        sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        redis.TimeoutError("timeout"),
    ]

    def call() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    assert patiently(call, seconds=10) == "done"
    assert failures == []


def test_any_other_error_is_raised_at_once() -> None:
    calls = []

    def call() -> None:
        calls.append(1)
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        patiently(call, seconds=10)
    assert len(calls) == 1


def test_storage_away_for_longer_than_allowed_raises() -> None:
    def call() -> None:
        raise redis.ConnectionError("still refused")

    with pytest.raises(redis.ConnectionError):
        patiently(call, seconds=0.3)
