"""The services with the shipped fakes of their ports (``runs.testing``): no Redis, no broker,
an in-memory SQLite database. What the integration tests check against the real Redis, the
fakes keep too, so a service's unit test can trust them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import sqlalchemy as sa

from runs.domain.definitions import Definition
from runs.domain.errors import NotFound, UnknownTarget
from runs.domain.events import RUN_ERROR, RUN_FINISHED, log_event, started_events
from runs.domain.projects import Project
from runs.domain.runs import Outcome, RunKind, RunRequest, RunStatus
from runs.messaging.routing import Router
from runs.persistence import migrate
from runs.persistence.engine import create_engine
from runs.services.access import AccessService
from runs.services.attempts import AttemptService
from runs.services.catalog import DefinitionCatalog
from runs.services.runs import RunService
from runs.testing import InMemoryEventLog, RecordingDispatcher


@pytest.fixture
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path_factory.mktemp('fakes') / 'runs.db'}"
    migrate.upgrade(url)
    created = create_engine(url)
    DefinitionCatalog(created, cache_seconds=0).register(
        [Definition(target="task:echo", kind="task")]
    )
    yield created
    created.dispose()


@pytest.fixture
def events() -> InMemoryEventLog:
    return InMemoryEventLog()


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture
def runs(
    engine: sa.Engine, events: InMemoryEventLog, dispatcher: RecordingDispatcher
) -> RunService:
    return RunService(
        engine,
        dispatcher=dispatcher,
        events=events,
        router=Router([], "runs"),
        catalog=DefinitionCatalog(engine, cache_seconds=0),
        max_input_bytes=4096,
    )


@pytest.fixture
def attempts(
    engine: sa.Engine, events: InMemoryEventLog, dispatcher: RecordingDispatcher
) -> AttemptService:
    return AttemptService(engine, dispatcher=dispatcher, events=events)


@pytest.fixture
def project(engine: sa.Engine) -> Project:
    return AccessService(engine).create_project("fakes")


def request(project: Project, target: str = "task:echo") -> RunRequest:
    return RunRequest(kind=RunKind.TASK, owner_kind="project", owner_id=project.id, target=target)


def test_a_created_run_is_committed_then_sent_once(
    runs: RunService, dispatcher: RecordingDispatcher, project: Project
) -> None:
    run, duplicate = runs.create(project, request(project))
    assert not duplicate and run.status is RunStatus.PENDING
    assert dispatcher.sent == [("task:echo", run.ref, "runs")]
    named = replace(request(project), public_id=run.run_id)
    again, duplicate = runs.create(project, named)
    assert duplicate and again.run_id == run.run_id  # the same id: the same run, not sent again
    with pytest.raises(UnknownTarget):
        runs.create(project, request(project, "task:nowhere"))
    assert len(dispatcher.sent) == 1


def test_an_attempt_runs_to_its_end_with_whole_event_ids(
    runs: RunService, attempts: AttemptService, events: InMemoryEventLog, project: Project
) -> None:
    run, _ = runs.create(project, request(project))
    claimed = attempts.claim(run.ref, owner="a", lease_seconds=30)
    assert claimed is not None and claimed.attempt == 1
    assert attempts.open_attempt(claimed, started_events(claimed.target), owner="a")
    assert attempts.emit(claimed.ref, [log_event("hi")], producer="a", sequence="1")
    assert attempts.emit(claimed.ref, [log_event("hi")], producer="a", sequence="1")  # a retry
    done = Outcome(RunStatus.COMPLETED, output={"ok": True}, exit_code=0)
    assert attempts.finish(claimed, done, owner="a")
    assert attempts.finish(claimed, done, owner="b") is False  # not its run
    stored = runs.events(project, run.run_id, after=0, limit=100).items  # from SQL now
    assert [e.event_id for e in stored] == [1, 2, 3, 4, 5]
    assert stored[-1].event_type == RUN_FINISHED
    assert [e.event_id for e in events.read(run.ref, after=0, limit=100)] == [1, 2, 3, 4, 5]


def test_a_cancel_closes_the_log_and_a_late_result_changes_nothing(
    runs: RunService, attempts: AttemptService, events: InMemoryEventLog, project: Project
) -> None:
    run, _ = runs.create(project, request(project))
    claimed = attempts.claim(run.ref, owner="a", lease_seconds=30)
    assert claimed is not None
    assert attempts.open_attempt(claimed, started_events(claimed.target), owner="a")
    cancelled, _ = runs.cancel(project, run.run_id)
    assert cancelled and events.cancel_requested(run.ref)
    assert not attempts.emit(claimed.ref, [log_event("late")], producer="a", sequence="9")
    late = Outcome(RunStatus.COMPLETED, output={"late": True}, exit_code=0)
    assert not attempts.finish(claimed, late, owner="a")
    final = runs.get(project, run.run_id)
    assert final.status is RunStatus.CANCELLED and final.output is None
    types = [e.event_type for e in runs.events(project, run.run_id, after=0, limit=100).items]
    assert types[-1] == RUN_ERROR


def test_projects_are_walls_here_too(runs: RunService, engine: sa.Engine, project: Project) -> None:
    run, _ = runs.create(project, request(project))
    other = AccessService(engine).create_project("other")
    with pytest.raises(NotFound):
        runs.get(other, run.run_id)
