"""Creates accepted together (``RunService.create_many`` and the API's ``CreateIntake``), on a
real database (SQLite and PostgreSQL) and the real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from runs.api.creates import CreateIntake
from runs.domain.errors import UnknownTarget
from runs.domain.projects import Project
from runs.domain.runs import Run, RunRequest, RunStatus
from runs.messaging.routing import Router
from runs.persistence.engine import autocommit
from runs.persistence.tables import projects
from runs.persistence.tables import runs as runs_table
from runs.services.catalog import DefinitionCatalog
from runs.services.runs import RunService
from runs.streams.event_log import RedisEventLog
from runs.testing import RecordingDispatcher
from tests.support.helpers import task_request
from tests.support.redis_hygiene import QUEUE


@contextmanager
def _statements(engine: sa.Engine) -> Iterator[list[str]]:
    """The SQL statements sent through ``engine`` meanwhile."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    engines = {engine, autocommit(engine)}  # PostgreSQL's autocommit engine is made once
    for each in engines:
        sa.event.listen(each, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for each in engines:
            sa.event.remove(each, "before_cursor_execute", record)


def _service(
    engine: sa.Engine, event_log: RedisEventLog, dispatcher: RecordingDispatcher
) -> RunService:
    """A service like the ``service`` fixture's, built now (after a listener was added: an
    option engine made later copies it)."""
    return RunService(
        engine,
        dispatcher=dispatcher,
        events=event_log,
        router=Router([], QUEUE),
        catalog=DefinitionCatalog(engine, cache_seconds=0),
        max_input_bytes=4096,
    )


def test_runs_accepted_together_share_one_insert_and_each_gets_its_own_answer(
    service: RunService,
    engine: sa.Engine,
    event_log: RedisEventLog,
    project: Project,
    dispatcher: RecordingDispatcher,
) -> None:
    taken, _ = service.create(project, task_request(project, public_id="run_taken-" + project.id))
    dispatcher.sent.clear()
    with _statements(engine) as statements:
        together = _service(engine, event_log, dispatcher)
        twin = "run_twin-" + project.id
        results = together.create_many(
            [
                (project, task_request(project)),
                (project, task_request(project, "task:nowhere")),
                (project, task_request(project, public_id=twin)),
                (project, task_request(project, public_id=twin)),
                (project, task_request(project, public_id=taken.run_id)),
                (project, task_request(project, "task:sleep")),
            ]
        )
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT INTO RUNS")]
    assert len(inserts) == 1, inserts
    first, refused, *answers = results
    assert isinstance(refused, UnknownTarget)
    answers.insert(0, first)
    assert all(isinstance(answer, tuple) for answer in answers)
    assert [duplicate for _, duplicate in answers] == [False, False, True, True, False]
    (one, _), (twin_first, _), (twin_again, _), (again, _), (last, _) = answers
    assert twin_first.run_id == twin_again.run_id == twin
    assert again.run_id == taken.run_id
    # Only the new runs' jobs are sent, once each, in the order they came, after the commit.
    new = [one, twin_first, last]
    assert [ref for _, ref, _ in dispatcher.sent] == [run.ref for run in new]
    for run in new:
        assert service.get(project, run.run_id).status is RunStatus.PENDING
    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(sa.func.count()).where(runs_table.c.project_id == project.id)
        ).scalar_one()
    assert stored == 4  # the one taken before, and three new


def _project_vanishes(service: RunService, engine: sa.Engine, doomed: str) -> None:
    """The service's checks pass just before the project ``doomed`` is deleted: the race
    between a create's check and its insert."""
    prepare = service.creation.prepare

    def prepare_then_delete(project_id: str, request: RunRequest) -> Run:
        run = prepare(project_id, request)
        if project_id == doomed:
            with engine.begin() as conn:
                conn.execute(projects.delete().where(projects.c.id == project_id))
        return run

    service.creation.prepare = prepare_then_delete  # type: ignore[method-assign]


def test_a_run_whose_project_vanished_fails_alone_and_the_rest_of_its_batch_is_accepted(
    service: RunService,
    engine: sa.Engine,
    event_log: RedisEventLog,
    project: Project,
    other_project: Project,
    dispatcher: RecordingDispatcher,
) -> None:
    racing = _service(engine, event_log, dispatcher)
    _project_vanishes(racing, engine, other_project.id)
    before, orphan, after = racing.create_many(
        [
            (project, task_request(project)),
            (other_project, task_request(other_project)),
            (project, task_request(project)),
        ]
    )
    assert isinstance(orphan, IntegrityError)
    assert isinstance(before, tuple) and isinstance(after, tuple)
    assert [ref for _, ref, _ in dispatcher.sent] == [before[0].ref, after[0].ref]
    for run in (before[0], after[0]):
        assert service.get(project, run.run_id).status is RunStatus.PENDING


def test_the_intake_batches_creates_that_arrive_while_one_is_committed(
    service: RunService, project: Project, dispatcher: RecordingDispatcher
) -> None:
    sizes: list[int] = []
    release = asyncio.Event()

    async def blocking(call: Any, batch: list[Any]) -> Any:
        sizes.append(len(batch))
        if len(sizes) == 1:  # hold the first batch until the others have arrived
            await release.wait()
        return await anyio.to_thread.run_sync(partial(call, batch))

    async def main() -> list[Any]:
        intake = CreateIntake(service.create_many, blocking)
        first = asyncio.create_task(intake.create(project, task_request(project, config={"i": 0})))
        while not sizes:
            await asyncio.sleep(0)
        others = [
            intake.create(project, task_request(project, config={"i": i})) for i in range(1, 20)
        ]
        others.append(intake.create(project, task_request(project, "task:nowhere")))
        waiting = asyncio.gather(*others, return_exceptions=True)
        await asyncio.sleep(0.05)
        release.set()
        return [await first, *await waiting]

    answers = asyncio.run(main())
    assert sizes == [1, 20]  # the lone first create, then all that arrived meanwhile
    *accepted, refused = answers
    assert isinstance(refused, UnknownTarget)
    assert [run.config for run, duplicate in accepted] == [{"i": i} for i in range(20)]
    assert not any(duplicate for _, duplicate in accepted)
    assert [ref for _, ref, _ in dispatcher.sent] == [run.ref for run, _ in accepted]
