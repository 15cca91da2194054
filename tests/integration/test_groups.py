"""Runs that travel together: the group statements against their one-run twins (SQLite and
PostgreSQL), and the group use cases on the real Redis, a lost answer and a half-way failure
of each included (``tests/integration/test_lost_answers.py`` does the same for one run)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from runs.domain.clock import utcnow
from runs.domain.events import RUN_FINISHED, RUN_STARTED, log_event, started_events
from runs.domain.projects import Project
from runs.domain.runs import Outcome, Run, RunRef, RunStatus
from runs.messaging.routing import Router
from runs.persistence import group_transitions as together
from runs.persistence import records, tables, transitions
from runs.persistence.engine import autocommit
from runs.services.attempt_groups import AttemptGroups, Ending
from runs.services.attempts import AttemptService, terminal_record
from runs.services.catalog import DefinitionCatalog
from runs.services.runs import RunService
from runs.streams.event_log import RedisEventLog
from runs.testing import RecordingDispatcher
from tests.integration.test_lost_answers import (
    PATIENCE,
    archived,
    assert_whole,
    done,
    fail_statement,
    finishing,
    lose_answer,
    updating_runs,
)
from tests.support.helpers import task_request
from tests.support.redis_hygiene import QUEUE


@pytest.fixture
def runs(
    engine: sa.Engine, event_log: RedisEventLog, dispatcher: RecordingDispatcher
) -> RunService:
    return RunService(
        engine,
        dispatcher=dispatcher,
        events=event_log,
        router=Router([], QUEUE),
        catalog=DefinitionCatalog(engine, cache_seconds=0),
        max_input_bytes=4096,
        group_size=4,
    )


@pytest.fixture
def attempts(
    engine: sa.Engine, event_log: RedisEventLog, dispatcher: RecordingDispatcher
) -> AttemptService:
    return AttemptService(engine, dispatcher=dispatcher, events=event_log, patience=PATIENCE)


@pytest.fixture
def groups(
    engine: sa.Engine,
    event_log: RedisEventLog,
    dispatcher: RecordingDispatcher,
    attempts: AttemptService,
) -> AttemptGroups:
    return AttemptGroups(
        engine, attempts=attempts, dispatcher=dispatcher, events=event_log, patience=PATIENCE
    )


def created(runs: RunService, project: Project, n: int) -> list[Run]:
    answers = runs.create_many([(project, task_request(project)) for _ in range(n)])
    made = [answer[0] for answer in answers if not isinstance(answer, Exception)]
    assert len(made) == n
    return made


def row(engine: sa.Engine, ref: RunRef) -> dict[str, Any]:
    with engine.connect() as conn:
        found = records.get_run(conn, ref)
    assert found is not None
    data = dataclasses.asdict(found)
    for key in ("run_id", "created_at", "updated_at", "available_at", "root_run_id"):
        data.pop(key)
    return data


# -- creation: runs created together travel together -------------------------------------


def test_runs_created_together_are_sent_in_groups_of_one_target_and_a_lone_run_alone(
    runs: RunService, project: Project, dispatcher: RecordingDispatcher
) -> None:
    requests = [(project, task_request(project)) for _ in range(6)]
    requests.insert(3, (project, task_request(project, target="task:sleep")))
    runs.create_many(requests)
    sizes = sorted(len(group) for group in dispatcher.groups_sent)
    assert sizes == [2, 4]  # echo: 6 runs in jobs of at most 4
    assert [target for target, _, _ in dispatcher.sent].count("task:sleep") == 1
    runs.create(project, task_request(project))
    assert len(dispatcher.groups_sent) == 2  # alone


# -- the statements against their twins -----------------------------------------------------


def raw_row(engine: sa.Engine, ref: RunRef) -> dict[str, Any]:
    """A run's row as stored: every column, and how each JSON column holds its value."""
    json_columns = [c.name for c in tables.runs.c if c.type is tables.JSONType]
    typed = [sa.func.json_typeof(sa.cast(tables.runs.c[name], sa.JSON)) for name in json_columns]
    if engine.dialect.name == "sqlite":
        typed = [sa.func.json_type(tables.runs.c[name]) for name in json_columns]
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(tables.runs, *typed).where(
                tables.runs.c.project_id == ref.project_id, tables.runs.c.run_id == ref.run_id
            )
        ).one()
    data = dict(zip(["*" + name for name in json_columns], found[-len(typed) :], strict=True))
    data |= dict(found._mapping)
    for key in ("run_id", "root_run_id"):
        data.pop(key)
    return data


def test_the_insert_of_new_runs_stores_what_its_sqlalchemy_twin_stores(
    engine: sa.Engine, runs: RunService, project: Project
) -> None:
    requests = [
        task_request(project),
        task_request(project, config=None, metadata={"a": [1, 2.5, None, "é"]}, name="n"),
        task_request(project, config={"big": 2**70, "s": "line\nnext"}, timeout_seconds=9),
        task_request(project, backoff_limit=2, batch_id="b", trigger_kind="schedule"),
    ]
    mine = [runs.creation.prepare(project.id, request) for request in requests]
    twins = [
        dataclasses.replace(run, run_id=f"{run.run_id}-twin", root_run_id=f"{run.run_id}-twin")
        for run in mine
    ]
    twin_insert = (
        (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(tables.runs)
        .on_conflict_do_nothing(index_elements=["project_id", "run_id"])
        .returning(tables.runs.c.run_id)
    )
    with engine.begin() as conn:
        assert records.insert_runs(conn, mine) == {run.ref for run in mine}
        assert records.insert_runs(conn, mine) == set()  # ids taken: skipped
        inserted = conn.execute(twin_insert, [records.row_of(run) for run in twins]).scalars()
        assert len(list(inserted)) == len(twins)
    for run, twin in zip(mine, twins, strict=True):
        assert raw_row(engine, run.ref) == raw_row(engine, twin.ref)
    assert row(engine, mine[2].ref)["config"] == {"big": 2**70, "s": "line\nnext"}


def test_a_group_claim_is_the_claim_of_each_run(
    engine: sa.Engine, runs: RunService, project: Project
) -> None:
    first, second, third, twin = created(runs, project, 4)
    now = utcnow()
    until = now + timedelta(seconds=60)
    with autocommit(engine).connect() as conn:
        transitions.claim_run(conn, third.ref, worker="x", lease_until=until, now=now)
        claimed = together.claim_runs(
            conn, [first.ref, second.ref, third.ref], worker="w", lease_until=until, now=now
        )
        alone = transitions.claim_run(conn, twin.ref, worker="w", lease_until=until, now=now)
        again = together.claimed_by(conn, [first.ref, second.ref, third.ref], "w")
    assert [run.ref for run in claimed] == [first.ref, second.ref]  # the third was taken
    assert [run.ref for run in again] == [first.ref, second.ref]
    assert alone is not None
    assert row(engine, first.ref) == row(engine, twin.ref)
    assert row(engine, first.ref)["status"] is RunStatus.RUNNING


def test_a_group_finish_writes_what_the_finish_of_each_run_writes(
    engine: sa.Engine, runs: RunService, project: Project, attempts: AttemptService
) -> None:
    mine, twin, taken = created(runs, project, 3)
    now = utcnow()
    with autocommit(engine).connect() as conn:
        claimed = together.claim_runs(
            conn, [mine.ref, twin.ref, taken.ref], worker="w", lease_until=now, now=now
        )
    ended = now + timedelta(seconds=1)
    items = []
    for run in claimed:
        _, values = terminal_record(run, done({"n": 1}), ended)
        events = [dataclasses.replace(e, event_id=i + 1) for i, e in enumerate(_archive(now))]
        items.append(together.Finishing(run.ref, run.attempt, values, events))
    single = transitions.finishes_in_one_statement(engine)
    with autocommit(engine).connect() if single else engine.begin() as conn:
        alone = items[1]
        assert transitions.finish_run(conn, alone.ref, alone.attempt, alone.values, alone.events)
        stale = dataclasses.replace(items[2], attempt=7)  # no longer this attempt's run
        finished = together.finish_runs(conn, [items[0], stale])
    assert finished == {mine.ref}
    assert row(engine, mine.ref) == row(engine, twin.ref)
    assert row(engine, mine.ref)["status"] is RunStatus.COMPLETED
    assert row(engine, taken.ref)["status"] is RunStatus.RUNNING
    mine_events = [(e.event_id, e.event_type, e.payload) for e in archived(engine, mine.ref)]
    twin_events = [(e.event_id, e.event_type, e.payload) for e in archived(engine, twin.ref)]
    assert mine_events == twin_events and len(mine_events) == 3
    assert archived(engine, taken.ref) == []


def _archive(now: Any) -> list[Any]:
    from runs.domain.events import RunEvent

    return [
        RunEvent(0, RUN_STARTED, {"target": "task:echo"}, now),
        RunEvent(0, "RUN_LOG_CAPTURED", {"line": "a\u0000b"}, now),
        RunEvent(0, RUN_FINISHED, {"status": "completed"}, now),
    ]


def test_a_hand_off_puts_unstarted_runs_back_as_they_were_claimed_from(
    engine: sa.Engine, runs: RunService, project: Project
) -> None:
    first, second, third = created(runs, project, 3)
    before = row(engine, first.ref)
    now = utcnow()
    until = now + timedelta(seconds=60)
    refs = [first.ref, second.ref, third.ref]
    with autocommit(engine).connect() as conn:
        together.claim_runs(conn, refs[:2], worker="w", lease_until=until, now=now)
        together.claim_runs(conn, refs[2:], worker="other", lease_until=until, now=now)
        later = now + timedelta(seconds=1)
        handed = together.hand_off_runs(conn, refs, owner="w", now=later)
        assert together.handed_off(conn, refs, later) == {first.ref, second.ref}
    assert handed == {first.ref, second.ref}
    after = row(engine, first.ref)
    assert after == before  # pending, attempt 0, never started, no lease
    assert row(engine, third.ref)["status"] is RunStatus.RUNNING


# -- the use cases on the real Redis -------------------------------------------------------


def endings(claimed: list[Run], owner: str, output: Any = None) -> list[Ending]:
    ended = utcnow()
    return [
        Ending(
            run,
            done(output or {"run": run.run_id}),
            owner,
            ended,
            [*started_events(run.target), log_event(f"line of {run.run_id}")],
        )
        for run in claimed
    ]


def test_a_group_finishes_its_runs_with_their_opening_events_and_the_terminal_one_last(
    engine: sa.Engine,
    runs: RunService,
    project: Project,
    groups: AttemptGroups,
) -> None:
    made = created(runs, project, 3)
    claimed = groups.claim([run.ref for run in made], owner="g", lease_seconds=60)
    assert len(claimed) == 3
    cancelled = claimed[1]
    runs.cancel(project, cancelled.run_id)
    assert groups.finish(endings(claimed, "g")) == [True, False, True]
    for run in (claimed[0], claimed[2]):
        stored = runs.get(project, run.run_id)
        assert stored.status is RunStatus.COMPLETED and stored.output == {"run": run.run_id}
        events = runs.events(project, run.run_id, after=0, limit=99).items
        assert events[0].event_type == RUN_STARTED
        assert f"line of {run.run_id}" in str(events[2].payload)
        assert_whole(events)
        assert_whole(archived(engine, run.ref))
    assert runs.get(project, cancelled.run_id).status is RunStatus.CANCELLED


def test_a_group_finish_repeated_after_a_lost_answer_changes_nothing_more(
    engine: sa.Engine, runs: RunService, project: Project, groups: AttemptGroups
) -> None:
    claimed = groups.claim([r.ref for r in created(runs, project, 2)], owner="g", lease_seconds=60)
    ended = endings(claimed, "g")
    assert groups.finish(ended) == [True, True]
    assert groups.finish(ended) == [True, True]  # the retry of a finish whose answer was lost
    for run in claimed:
        assert_whole(runs.events(project, run.run_id, after=0, limit=99).items)
        assert_whole(archived(engine, run.ref))


@pytest.mark.parametrize("fault", ["lose", "fail"])
def test_a_group_finish_whose_statement_failed_finishes_each_run_the_same(
    engine: sa.Engine, runs: RunService, project: Project, groups: AttemptGroups, fault: str
) -> None:
    claimed = groups.claim([r.ref for r in created(runs, project, 3)], owner="g", lease_seconds=60)
    injected = lose_answer if fault == "lose" else fail_statement
    with injected(engine, finishing) as hits:
        assert groups.finish(endings(claimed, "g")) == [True, True, True]
    assert hits
    for run in claimed:
        stored = runs.get(project, run.run_id)
        assert stored.status is RunStatus.COMPLETED and stored.attempt == 1
        assert_whole(runs.events(project, run.run_id, after=0, limit=99).items)
        assert_whole(archived(engine, run.ref))


def test_a_group_finish_whose_publish_failed_publishes_on_its_own(
    engine: sa.Engine,
    runs: RunService,
    project: Project,
    groups: AttemptGroups,
    event_log: RedisEventLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    claimed = groups.claim([r.ref for r in created(runs, project, 2)], owner="g", lease_seconds=60)
    real = RedisEventLog.publish_many

    def lost(self: RedisEventLog, items: Any) -> None:
        real(self, items[:1])  # half of it reached Redis
        raise redis.exceptions.ConnectionError("Redis went away")

    monkeypatch.setattr(RedisEventLog, "publish_many", lost)
    assert groups.finish(endings(claimed, "g")) == [True, True]
    for run in claimed:
        assert_whole(runs.events(project, run.run_id, after=0, limit=99).items)


def test_a_group_claim_whose_answer_was_lost_is_found_by_its_owner(
    engine: sa.Engine, runs: RunService, project: Project, groups: AttemptGroups
) -> None:
    made = created(runs, project, 3)
    with lose_answer(engine, updating_runs) as lost:
        claimed = groups.claim([r.ref for r in made], owner="g", lease_seconds=60)
    assert lost
    assert [run.ref for run in claimed] == [run.ref for run in made]
    assert all(run.attempt == 1 for run in claimed)


def test_a_hand_off_sends_the_runs_again_in_one_job_and_survives_a_lost_answer(
    engine: sa.Engine,
    runs: RunService,
    project: Project,
    groups: AttemptGroups,
    dispatcher: RecordingDispatcher,
) -> None:
    made = created(runs, project, 3)
    claimed = groups.claim([r.ref for r in made], owner="g", lease_seconds=60)
    runs.cancel(project, claimed[2].run_id)
    sent = len(dispatcher.groups_sent)
    with lose_answer(engine, updating_runs) as lost:
        handed = groups.hand_off(claimed, owner="g")
    assert lost
    assert handed == {claimed[0].ref, claimed[1].ref}
    assert dispatcher.groups_sent[sent:] == [[claimed[0].ref, claimed[1].ref]]
    for run in claimed[:2]:
        stored = runs.get(project, run.run_id)
        assert stored.status is RunStatus.PENDING and stored.attempt == 0
        assert stored.started_at is None
    cancelled = runs.get(project, claimed[2].run_id)
    assert cancelled.status is RunStatus.CANCELLED and cancelled.cancel_stopped_at is not None


def test_runs_handed_off_apart_are_sent_a_job_each(
    runs: RunService, project: Project, groups: AttemptGroups, dispatcher: RecordingDispatcher
) -> None:
    made = created(runs, project, 3)
    claimed = groups.claim([r.ref for r in made], owner="g", lease_seconds=60)
    sent, grouped = len(dispatcher.sent), len(dispatcher.groups_sent)
    assert groups.hand_off(claimed, owner="g", jobs=3) == {r.ref for r in claimed}
    assert len(dispatcher.groups_sent) == grouped
    assert [ref for _, ref, _ in dispatcher.sent[sent:]] == [r.ref for r in claimed]


def test_a_run_handed_off_starts_again_as_its_first_start(
    runs: RunService, project: Project, groups: AttemptGroups
) -> None:
    made = created(runs, project, 2)
    claimed = groups.claim([r.ref for r in made], owner="g", lease_seconds=60)
    groups.hand_off(claimed, owner="g")
    again = groups.claim([r.ref for r in made], owner="h", lease_seconds=60)
    assert [run.attempt for run in again] == [1, 1]
    assert all(run.first_start for run in again)
    assert groups.finish(endings(again, "h")) == [True, True]
    stored = runs.get(project, again[0].run_id)
    assert stored.status is RunStatus.COMPLETED and len(stored.attempts) == 1


def test_a_group_writes_the_real_start_of_each_attempt(
    runs: RunService, project: Project, groups: AttemptGroups
) -> None:
    claimed = groups.claim([r.ref for r in created(runs, project, 1)], owner="g", lease_seconds=60)
    start = claimed[0].started_at
    assert start is not None
    later = start + timedelta(milliseconds=30)
    run = dataclasses.replace(claimed[0], started_at=later, attempt_started_at=later)
    ending = Ending(run, done(), "g", later + timedelta(milliseconds=5), started_events(run.target))
    assert groups.finish([ending]) == [True]
    stored = runs.get(project, run.run_id)
    assert stored.started_at == later and stored.duration_ms == 5
    assert stored.attempts[0].started_at == later


def test_a_group_outcome_refused_when_its_run_was_reclaimed(
    runs: RunService, project: Project, groups: AttemptGroups, attempts: AttemptService
) -> None:
    claimed = groups.claim([r.ref for r in created(runs, project, 1)], owner="g", lease_seconds=60)
    ended = endings(claimed, "g")
    failed = Outcome(RunStatus.FAILED, error=None, exit_code=1)
    attempts.finish(claimed[0], failed, owner="sweeper")  # another closed the stream first
    assert groups.finish(ended) == [False]
    assert runs.get(project, claimed[0].run_id).status is RunStatus.FAILED
