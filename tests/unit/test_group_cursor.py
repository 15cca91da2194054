"""When a group's runs not started yet go to other pool processes (``GroupCursor``): when the
running attempt is past the hand-off bound, a job each; when the worker drains, together;
never merely because the group as a whole has taken longer than the bound."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from runs.domain.runs import Run, RunKind, RunStatus
from workers.execution import guard
from workers.execution.task_groups import GroupCloser, GroupCursor

BOUND_MS = 20


@dataclass
class Groups:
    handed: list[tuple[list[str], int]] = field(default_factory=list)

    def hand_off(self, runs: list[Run], *, owner: str, jobs: int = 1) -> set[Any]:
        self.handed.append(([run.run_id for run in runs], jobs))
        return {run.ref for run in runs}


def new_run(n: int) -> Run:
    now = datetime.now(UTC)
    return Run(
        run_id=f"run_{n}",
        project_id="p",
        kind=RunKind.TASK,
        status=RunStatus.RUNNING,
        owner_kind="project",
        owner_id="p",
        parent_run_id=None,
        root_run_id=f"run_{n}",
        target="task:echo",
        queue="q",
        attempt=1,
        created_at=now,
        updated_at=now,
    )


@pytest.fixture
def groups() -> Groups:
    return Groups()


@pytest.fixture
def cursor(groups: Groups) -> GroupCursor:
    runtime: Any = SimpleNamespace(
        settings=SimpleNamespace(worker_handoff_ms=BOUND_MS), groups=groups
    )
    return GroupCursor(runtime, [new_run(n) for n in range(4)], "owner", GroupCloser(runtime))


def test_quick_attempts_keep_the_group_past_the_bound(cursor: GroupCursor, groups: Groups) -> None:
    taken = []
    while (run := cursor.next()) is not None:
        taken.append(run.run_id)
        time.sleep(BOUND_MS / 1000 / 2)  # each attempt within the bound, all of them past it
        cursor.tick(time.monotonic())
    assert taken == ["run_0", "run_1", "run_2", "run_3"]
    assert groups.handed == []


def test_an_attempt_past_the_bound_sends_the_rest_a_job_each(
    cursor: GroupCursor, groups: Groups
) -> None:
    assert cursor.next() is not None
    cursor.tick(time.monotonic())
    assert groups.handed == []
    time.sleep(BOUND_MS / 1000 * 1.5)
    cursor.tick(time.monotonic())
    assert groups.handed == [(["run_1", "run_2", "run_3"], 3)]
    assert cursor.next() is None


def test_a_draining_worker_hands_the_rest_off_together(
    cursor: GroupCursor, groups: Groups, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cursor.next() is not None
    monkeypatch.setattr(guard, "drain_requested", lambda: True)
    assert cursor.next() is None
    assert groups.handed == [(["run_1", "run_2", "run_3"], 1)]
