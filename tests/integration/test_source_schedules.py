"""Schedules written in code beside the tasks: synced into the catalogue when a worker starts,
updated when the code changes, paused (not deleted) when the code no longer has them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from runs.domain.projects import Project
from runs.domain.schedules import DefinitionSource, Schedule, ScheduleStatus
from runs.persistence.schedules import ScheduleFilters
from runs.persistence.tables import schedules as schedules_table
from runs.scheduling.catalogue import ScheduleService
from runs.scheduling.code_schedules import REMOVED, sync_source_schedules
from runs.services.runs import RunService
from workers.definitions.errors import DefinitionError
from workers.definitions.registry import Registry


@pytest.fixture
def schedules(engine: sa.Engine, service: RunService) -> Iterator[ScheduleService]:
    yield ScheduleService(engine, runs=service)
    with engine.begin() as conn:
        conn.execute(schedules_table.delete())


def declared(cron: str = "0 3 * * *", *, with_other: bool = True) -> Registry:
    registry = Registry()
    registry.schedule(
        "nightly-sync",
        cron=cron,
        timezone="Europe/Berlin",
        target="task:echo",
        input={"full": True},
    )
    if with_other:
        registry.schedule("every-minute", interval_seconds=60, target="task:sleep")
    return registry


def by_source(schedules: ScheduleService, project: Project) -> dict[str | None, Schedule]:
    return {s.source_trigger_id: s for s in schedules.source_schedules(project)}


def test_a_worker_start_creates_the_schedules_written_in_code(
    schedules: ScheduleService, project: Project
) -> None:
    result = sync_source_schedules(schedules, project, declared().schedules())
    assert sorted(result.created) == ["every-minute", "nightly-sync"]
    nightly = schedules.list(
        project, ScheduleFilters(source_trigger_id="nightly-sync"), cursor=None, limit=10
    ).items[0]
    assert nightly.definition_source is DefinitionSource.SOURCE
    assert (nightly.cron, nightly.timezone, nightly.input) == (
        "0 3 * * *",
        "Europe/Berlin",
        {"full": True},
    )
    assert nightly.source_path == "tests/integration/test_source_schedules.py"
    assert nightly.source_hash and nightly.status is ScheduleStatus.ACTIVE
    again = sync_source_schedules(schedules, project, declared().schedules())
    assert (again.created, again.updated, again.paused) == ([], [], [])


def test_changed_code_updates_the_schedule(schedules: ScheduleService, project: Project) -> None:
    sync_source_schedules(schedules, project, declared().schedules())
    before = by_source(schedules, project)["nightly-sync"]
    result = sync_source_schedules(schedules, project, declared("30 4 * * *").schedules())
    after = by_source(schedules, project)["nightly-sync"]
    assert result.updated == ["nightly-sync"]
    assert after.id == before.id
    assert after.cron == "30 4 * * *"
    assert after.source_hash != before.source_hash
    assert after.next_run_at != before.next_run_at


def test_a_schedule_removed_from_the_code_is_paused_with_a_reason_and_comes_back(
    schedules: ScheduleService, project: Project
) -> None:
    sync_source_schedules(schedules, project, declared().schedules())
    result = sync_source_schedules(schedules, project, declared(with_other=False).schedules())
    gone = by_source(schedules, project)["every-minute"]
    assert result.paused == ["every-minute"]
    assert (gone.status, gone.paused_reason) == (ScheduleStatus.PAUSED, REMOVED)
    back = sync_source_schedules(schedules, project, declared().schedules())
    assert back.updated == ["every-minute"]
    assert by_source(schedules, project)["every-minute"].status is ScheduleStatus.ACTIVE


def test_a_schedule_paused_through_the_api_stays_paused_across_syncs(
    schedules: ScheduleService, project: Project
) -> None:
    sync_source_schedules(schedules, project, declared().schedules())
    nightly = by_source(schedules, project)["nightly-sync"]
    schedules.update(project, nightly.id, {"status": "paused"})
    sync_source_schedules(schedules, project, declared().schedules())
    assert by_source(schedules, project)["nightly-sync"].status is ScheduleStatus.PAUSED


def test_a_schedule_declared_twice_differently_is_refused() -> None:
    registry = declared()
    with pytest.raises(DefinitionError):
        registry.schedule("nightly-sync", cron="0 4 * * *", target="task:echo")
