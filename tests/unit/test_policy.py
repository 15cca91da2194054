"""Attempts, timeouts and backoff of task runs: the run's values, then its definition's, then
the settings' defaults; every timeout capped; backoff exponential with jitter."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from runs.domain.runs import Run, RunKind, RunStatus
from tests.conftest import base_settings
from workers.definitions.registry import TaskDefinition
from workers.execution.policy import backoff_delay, policy_for

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def a_run(**changes: object) -> Run:
    run = Run(
        run_id="run_1",
        project_id="p",
        kind=RunKind.TASK,
        status=RunStatus.RUNNING,
        owner_kind="project",
        owner_id="p",
        target="task:t",
        queue="runs",
        root_run_id="run_1",
        created_at=T0,
        updated_at=T0,
        attempt=1,
    )
    return replace(run, **changes)  # type: ignore[arg-type]


def definition(**changes: object) -> TaskDefinition:
    return replace(TaskDefinition(id="t", fn=lambda ctx: None), **changes)  # type: ignore[arg-type]


def test_the_runs_own_values_win_over_its_definitions_and_the_settings() -> None:
    settings = base_settings(default_backoff_limit=1, max_timeout_seconds=600)
    policy = policy_for(
        settings,
        definition(backoff_limit=4, timeout_seconds=300),
        a_run(backoff_limit=0, timeout_seconds=60),
    )
    assert policy.max_attempts == 1 and policy.timeout_seconds == 60


def test_the_definition_applies_when_the_run_sets_nothing() -> None:
    settings = base_settings(default_backoff_limit=1, max_timeout_seconds=600)
    policy = policy_for(settings, definition(backoff_limit=4, timeout_seconds=300), a_run())
    assert policy.max_attempts == 5 and policy.timeout_seconds == 300


def test_the_settings_apply_when_neither_sets_anything_and_cap_every_timeout() -> None:
    settings = base_settings(default_backoff_limit=2, max_timeout_seconds=600)
    assert policy_for(settings, definition(), a_run()).max_attempts == 3
    assert policy_for(settings, None, a_run()).timeout_seconds == 600
    capped = policy_for(settings, definition(timeout_seconds=9999), a_run())
    assert capped.timeout_seconds == 600


@pytest.mark.parametrize("attempt", [1, 2, 3, 8])
def test_backoff_doubles_per_attempt_up_to_its_maximum_jittered_down_by_up_to_half(
    attempt: int,
) -> None:
    settings = base_settings(retry_backoff_seconds=2, retry_backoff_max_seconds=10)
    ceiling = min(2 * 2 ** (attempt - 1), 10)
    delays = [backoff_delay(settings, attempt) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > 0  # jittered


def test_a_run_that_waited_past_the_queue_ttl_is_expired_and_one_just_in_time_is_not() -> None:
    policy = policy_for(base_settings(queue_ttl_seconds=30), None, a_run())
    late = a_run(available_at=T0, attempt_started_at=T0 + timedelta(seconds=31))
    in_time = a_run(available_at=T0, attempt_started_at=T0 + timedelta(seconds=29))
    assert policy.waited_too_long(late)
    assert not policy.waited_too_long(in_time)
    # A retry's wait counts from when it became due, not from when the run was created.
    retry = a_run(
        created_at=T0,
        available_at=T0 + timedelta(hours=1),
        attempt_started_at=T0 + timedelta(hours=1, seconds=5),
    )
    assert not policy.waited_too_long(retry)


def test_without_a_queue_ttl_no_run_expires() -> None:
    policy = policy_for(base_settings(), None, a_run())
    assert not policy.waited_too_long(
        a_run(available_at=T0, attempt_started_at=T0 + timedelta(days=3))
    )
