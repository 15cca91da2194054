"""Every state-changing call of the worker, asked: what if it succeeded on the server but its
answer was lost, or it failed half way? The retry by the same caller must complete the same
change, never a second one. On SQLite and PostgreSQL, and on the real Redis and a Redis Cluster.

Faults are injected where they happen: a statement that ran (committed, in autocommit) and then
raised as a dropped connection does (``lose_answer``), a statement that raised before it ran
(``fail_statement``), an event-log call that reached Redis and then raised (``FlakyEventLog``).
The services are wired with ``patience``, as in a worker, so they retry on their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from runs.domain.events import (
    RUN_FINISHED,
    RUN_LOG_CAPTURED,
    RUN_STARTED,
    STEP_FINISHED,
    STEP_STARTED,
    RunEvent,
    attempt_started_event,
    log_event,
    started_events,
)
from runs.domain.projects import Project
from runs.domain.runs import Lease, Outcome, Run, RunError, RunRef, RunStatus
from runs.domain.workflows import NodeStatus
from runs.messaging.routing import Router
from runs.persistence import event_archive, records
from runs.persistence.engine import autocommit
from runs.services.attempts import AttemptService
from runs.services.catalog import DefinitionCatalog
from runs.services.runs import RunService
from runs.services.workflows import WorkflowService
from runs.streams.event_log import RedisEventLog
from runs.testing import RecordingDispatcher
from tests.conftest import EventRedis
from tests.support.helpers import task_request
from tests.support.redis_hygiene import QUEUE
from workers.execution.outbox import EventOutbox

PATIENCE = 5.0


class InjectedDrop(Exception):
    """What the injected faults raise in place of the driver's own error."""


@contextlib.contextmanager
def _listening(
    engine: sa.Engine, event: str, matches: Callable[[str], bool], times: int
) -> Iterator[list[str]]:
    hits: list[str] = []

    def listener(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if len(hits) < times and matches(statement):
            hits.append(statement)
            raise sa.exc.OperationalError(statement, None, InjectedDrop("connection dropped"))

    targets = {engine, autocommit(engine)}
    for target in targets:
        sa.event.listen(target, event, listener)
    try:
        yield hits
    finally:
        for target in targets:
            sa.event.remove(target, event, listener)


def lose_answer(engine: sa.Engine, matches: Callable[[str], bool], times: int = 1) -> Any:
    """The matching statement runs (and commits, in autocommit); then its answer is lost."""
    return _listening(engine, "after_cursor_execute", matches, times)


def fail_statement(engine: sa.Engine, matches: Callable[[str], bool], times: int = 1) -> Any:
    """The matching statement never runs: the connection drops before it."""
    return _listening(engine, "before_cursor_execute", matches, times)


def updating_runs(statement: str) -> bool:
    return statement.lstrip().upper().startswith("UPDATE RUNS")


def updating_nodes(statement: str) -> bool:
    return statement.lstrip().upper().startswith("UPDATE WORKFLOW_NODES")


def finishing(statement: str) -> bool:
    """The terminal record's statement (on PostgreSQL, the UPDATE inside a CTE)."""
    text = statement.upper()
    return "UPDATE RUNS" in text and "COMPLETED_AT" in text and "LEASE_OWNER" in text


class FlakyEventLog(RedisEventLog):
    """The real event log; ``lose(name)`` makes the next call of that method reach Redis and
    then raise, ``fail(name)`` makes it raise before it reaches Redis."""

    def __init__(self, log: RedisEventLog) -> None:
        super().__init__(log.client, ttl_seconds=3600)
        self._faults: dict[str, str] = {}

    def lose(self, name: str) -> None:
        self._faults[name] = "lose"

    def fail(self, name: str) -> None:
        self._faults[name] = "fail"

    def _faulty(self, name: str, call: Callable[[], Any]) -> Any:
        fault = self._faults.pop(name, None)
        if fault == "fail":
            raise redis.exceptions.ConnectionError("Redis went away before the call")
        result = call()
        if fault == "lose":
            raise redis.exceptions.ConnectionError("Redis went away before the answer")
        return result

    def append(self, ref: RunRef, events: Any, **kwargs: Any) -> list[int]:
        return self._faulty(
            "append", lambda: super(FlakyEventLog, self).append(ref, events, **kwargs)
        )  # type: ignore[no-any-return]

    def open(self, ref: RunRef, owner: str, events: Any) -> bool:
        return self._faulty("open", lambda: super(FlakyEventLog, self).open(ref, owner, events))  # type: ignore[no-any-return]

    def close_attempt(self, ref: RunRef, owner: str, count: int, *, cancel: bool = False) -> Any:
        return self._faulty(
            "close_attempt",
            lambda: super(FlakyEventLog, self).close_attempt(ref, owner, count, cancel=cancel),
        )

    def publish(self, ref: RunRef, events: Any) -> None:
        self._faulty("publish", lambda: super(FlakyEventLog, self).publish(ref, events))


@pytest.fixture
def event_log(event_redis: EventRedis) -> RedisEventLog:
    return event_redis.log


@pytest.fixture
def flaky(event_log: RedisEventLog) -> FlakyEventLog:
    return FlakyEventLog(event_log)


@pytest.fixture
def runs(engine: sa.Engine, flaky: FlakyEventLog, dispatcher: RecordingDispatcher) -> RunService:
    return RunService(
        engine,
        dispatcher=dispatcher,
        events=flaky,
        router=Router([], QUEUE),
        catalog=DefinitionCatalog(engine, cache_seconds=0),
        max_input_bytes=4096,
    )


@pytest.fixture
def worker(
    engine: sa.Engine, flaky: FlakyEventLog, dispatcher: RecordingDispatcher
) -> AttemptService:
    """The worker's side, patient as a worker's is."""
    return AttemptService(engine, dispatcher=dispatcher, events=flaky, patience=PATIENCE)


def opened(runs: RunService, worker: AttemptService, project: Project, owner: str) -> Run:
    run, _ = runs.create(project, task_request(project))
    claimed = worker.claim(run.ref, owner=owner, lease_seconds=60)
    assert claimed is not None
    assert worker.open_attempt(claimed, started_events(claimed.target), owner=owner)
    return claimed


def archived(engine: sa.Engine, ref: RunRef) -> list[RunEvent]:
    with engine.connect() as conn:
        return event_archive.list_events(conn, ref, after=0, limit=1000)


def assert_whole(events: list[RunEvent], last: str = RUN_FINISHED) -> None:
    """Event ids 1..n with none skipped or repeated, and the terminal event last."""
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event_type == last
    assert sum(e.event_type in (RUN_FINISHED, "RUN_ERROR") for e in events) == 1


def done(output: Any = None) -> Outcome:
    return Outcome(RunStatus.COMPLETED, output=output or {"ok": True}, exit_code=0)


# -- claim -----------------------------------------------------------------------------------


def test_a_claim_whose_answer_was_lost_is_found_by_its_owner_on_retry(
    engine: sa.Engine, runs: RunService, worker: AttemptService, project: Project
) -> None:
    run, _ = runs.create(project, task_request(project))
    with lose_answer(engine, updating_runs) as lost:
        claimed = worker.claim(run.ref, owner="a", lease_seconds=60)
    assert lost, "the fault was injected"
    assert claimed is not None and claimed.attempt == 1 and claimed.status is RunStatus.RUNNING
    assert worker.claim(run.ref, owner="a", lease_seconds=60) == claimed  # asked again: same
    assert worker.claim(run.ref, owner="b", lease_seconds=60) is None  # nobody else's
    assert runs.load(run.ref).attempt == 1  # type: ignore[union-attr]


# -- open and emit -----------------------------------------------------------------------------


def test_an_open_whose_answer_was_lost_appends_the_opening_events_once(
    runs: RunService, worker: AttemptService, flaky: FlakyEventLog, project: Project
) -> None:
    run, _ = runs.create(project, task_request(project))
    claimed = worker.claim(run.ref, owner="a", lease_seconds=60)
    assert claimed is not None
    flaky.lose("open")
    assert worker.open_attempt(claimed, started_events(claimed.target), owner="a")
    assert [e.event_type for e in flaky.read(run.ref, after=0, limit=10)] == [
        RUN_STARTED,
        STEP_STARTED,
    ]


def test_an_append_whose_answer_was_lost_is_appended_once_and_a_new_batch_after_it(
    runs: RunService, worker: AttemptService, flaky: FlakyEventLog, project: Project
) -> None:
    claimed = opened(runs, worker, project, "a")
    flaky.lose("append")
    assert worker.emit(claimed.ref, [log_event("one")], producer="a", sequence="1")
    assert worker.emit(claimed.ref, [log_event("two")], producer="a", sequence="2")
    lines = [e.payload["logs"] for e in flaky.read(claimed.ref, after=2, limit=10)]
    assert lines == ["one", "two"]


def test_an_outbox_batch_whose_answer_was_lost_is_sent_again_under_its_number_and_kept_once(
    runs: RunService, worker: AttemptService, flaky: FlakyEventLog, project: Project
) -> None:
    claimed = opened(runs, worker, project, "a")
    # The attempt's events as the worker sends them: numbered batches, no retry of its own.
    plain = AttemptService(runs._engine, dispatcher=RecordingDispatcher(sent=[]), events=flaky)
    outbox = EventOutbox(
        lambda events, n: plain.emit(claimed.ref, events, producer="a", sequence=str(n)) and None
    )
    outbox._pending.extend([log_event("one"), log_event("two")])
    flaky.lose("append")
    with pytest.raises(Exception, match="before the answer"):
        outbox.flush()
    outbox.put([log_event("three")])
    outbox.flush()
    events = flaky.read(claimed.ref, after=0, limit=10)
    assert [e.payload["logs"] for e in events if e.event_type == RUN_LOG_CAPTURED] == [
        "one",
        "two",
        "three",
    ]
    assert [e.event_id for e in events] == list(range(1, 6))


# -- finish --------------------------------------------------------------------------------------


def test_a_finish_whose_terminal_write_failed_after_the_close_completes_on_retry(
    engine: sa.Engine,
    runs: RunService,
    worker: AttemptService,
    flaky: FlakyEventLog,
    project: Project,
) -> None:
    """The reported fault: the close reserved the final ids, then the SQL write failed (the
    database restarted); the retry found the stream closed by its own first try."""
    claimed = opened(runs, worker, project, "a")
    assert worker.emit(claimed.ref, [log_event("working")], producer="a", sequence="1")
    with fail_statement(engine, finishing) as failed:
        assert worker.finish(claimed, done({"answer": 42}), owner="a")
    assert failed, "the fault was injected"
    final = runs.load(claimed.ref)
    assert final is not None and final.status is RunStatus.COMPLETED
    assert final.output == {"answer": 42} and final.attempt == 1
    assert_whole(archived(engine, claimed.ref))
    assert_whole(flaky.read(claimed.ref, after=0, limit=100))


def test_a_finish_whose_terminal_write_landed_but_its_answer_was_lost_reports_finished(
    engine: sa.Engine,
    runs: RunService,
    worker: AttemptService,
    flaky: FlakyEventLog,
    project: Project,
) -> None:
    claimed = opened(runs, worker, project, "a")
    with lose_answer(engine, finishing) as lost:
        assert worker.finish(claimed, done(), owner="a")
    assert lost
    assert runs.load(claimed.ref).status is RunStatus.COMPLETED  # type: ignore[union-attr]
    assert_whole(archived(engine, claimed.ref))
    assert_whole(flaky.read(claimed.ref, after=0, limit=100))


@pytest.mark.parametrize("fault", ["lose", "fail"])
@pytest.mark.parametrize("step", ["close_attempt", "publish"])
def test_a_finish_whose_close_or_publish_failed_or_lost_its_answer_completes_once(
    engine: sa.Engine,
    runs: RunService,
    worker: AttemptService,
    flaky: FlakyEventLog,
    project: Project,
    step: str,
    fault: str,
) -> None:
    claimed = opened(runs, worker, project, "a")
    getattr(flaky, fault)(step)
    assert worker.finish(claimed, done(), owner="a")
    assert runs.load(claimed.ref).status is RunStatus.COMPLETED  # type: ignore[union-attr]
    assert_whole(archived(engine, claimed.ref))
    assert_whole(flaky.read(claimed.ref, after=0, limit=100))


def test_a_finish_asked_again_by_another_attempt_changes_nothing(
    engine: sa.Engine, runs: RunService, worker: AttemptService, project: Project
) -> None:
    claimed = opened(runs, worker, project, "a")
    assert worker.finish(claimed, done({"first": 1}), owner="a")
    assert not worker.finish(claimed, done({"second": 2}), owner="b")
    assert runs.load(claimed.ref).output == {"first": 1}  # type: ignore[union-attr]
    assert_whole(archived(engine, claimed.ref))


def test_the_ids_an_attempt_reserved_before_it_died_are_used_by_the_next_attempt(
    engine: sa.Engine,
    runs: RunService,
    worker: AttemptService,
    flaky: FlakyEventLog,
    project: Project,
) -> None:
    """Attempt 1 closed the stream to finish and died before its record: attempt 2's events
    take the ids attempt 1 had reserved, so none is skipped."""
    claimed = opened(runs, worker, project, "a")
    assert flaky.close_attempt(claimed.ref, "a", 2) is not None
    handed = AttemptService(engine, dispatcher=RecordingDispatcher(sent=[]), events=flaky)
    assert handed.hand_back(claimed)  # (as the sweeper would after its lease, but at once)
    second = worker.claim(claimed.ref, owner="b", lease_seconds=60)
    assert second is not None
    assert worker.open_attempt(second, [attempt_started_event(second.target, 1)], owner="b")
    assert worker.finish(second, done(), owner="b")
    assert_whole(archived(engine, claimed.ref))


def test_a_cancel_after_an_unfinished_close_reuses_its_ids(
    engine: sa.Engine,
    runs: RunService,
    worker: AttemptService,
    flaky: FlakyEventLog,
    project: Project,
) -> None:
    claimed = opened(runs, worker, project, "a")
    assert flaky.close_attempt(claimed.ref, "a", 2) is not None  # then the SQL write failed
    cancelled, _ = runs.cancel(project, claimed.run_id)
    assert cancelled
    assert not worker.finish(claimed, done(), owner="a")  # the retry: the run is not its own
    assert_whole(archived(engine, claimed.ref), last="RUN_ERROR")
    assert runs.load(claimed.ref).status is RunStatus.CANCELLED  # type: ignore[union-attr]


# -- retry, hand back, stop, renew ----------------------------------------------------------------


def test_a_retry_whose_answer_was_lost_records_the_attempt_once_and_sends_the_next_one(
    engine: sa.Engine,
    runs: RunService,
    worker: AttemptService,
    dispatcher: RecordingDispatcher,
    project: Project,
) -> None:
    claimed = opened(runs, worker, project, "a")
    dispatcher.sent.clear()
    failed = Outcome(RunStatus.FAILED, error=RunError("boom"), exit_code=1)
    with lose_answer(engine, updating_runs) as lost:
        assert worker.retry(claimed, failed, 0)
    assert lost
    after = runs.load(claimed.ref)
    assert after is not None and after.status is RunStatus.PENDING
    assert [a.attempt for a in after.attempts] == [1]
    assert dispatcher.sent == [(claimed.target, claimed.ref, claimed.queue)]


def test_a_hand_back_whose_answer_was_lost_still_sends_the_run_again_uncounted(
    engine: sa.Engine,
    runs: RunService,
    worker: AttemptService,
    dispatcher: RecordingDispatcher,
    project: Project,
) -> None:
    claimed = opened(runs, worker, project, "a")
    dispatcher.sent.clear()
    with lose_answer(engine, updating_runs) as lost:
        assert worker.hand_back(claimed)
    assert lost
    after = runs.load(claimed.ref)
    assert after is not None and after.status is RunStatus.PENDING and after.attempt == 0
    assert dispatcher.sent == [(claimed.target, claimed.ref, claimed.queue)]


def test_a_stop_record_asked_again_keeps_the_first_time(
    engine: sa.Engine, runs: RunService, worker: AttemptService, project: Project
) -> None:
    claimed = opened(runs, worker, project, "a")
    assert runs.cancel(project, claimed.run_id)[0]
    with lose_answer(engine, updating_runs) as lost:
        worker.record_stop(claimed)  # landed; the retry finds it noted and changes nothing
    assert lost
    first = runs.load(claimed.ref).cancel_stopped_at  # type: ignore[union-attr]
    assert first is not None
    assert not worker.record_stop(claimed)
    assert runs.load(claimed.ref).cancel_stopped_at == first  # type: ignore[union-attr]


def test_a_lease_renewal_asked_again_only_extends_the_lease_again(
    runs: RunService, worker: AttemptService, project: Project
) -> None:
    claimed = opened(runs, worker, project, "a")
    assert worker.renew(claimed, 60) is Lease.HELD
    assert worker.renew(claimed, 60) is Lease.HELD
    assert runs.load(claimed.ref).status is RunStatus.RUNNING  # type: ignore[union-attr]


# -- the intake ----------------------------------------------------------------------------------


def test_a_create_whose_insert_ran_twice_after_a_dropped_connection_is_accepted_and_sent_once(
    runs: RunService,
    dispatcher: RecordingDispatcher,
    project: Project,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection dropped after the INSERT committed; the statement was tried once more
    (``runs.persistence.engine``) and found the id taken, by its own row: an acceptance, not
    a duplicate, and its job is sent."""
    real = records.insert_runs

    def twice(conn: sa.Connection, rows: Any) -> set[RunRef]:
        real(conn, rows)
        return real(conn, rows)

    monkeypatch.setattr(records, "insert_runs", twice)
    run, duplicate = runs.create(project, task_request(project))
    assert not duplicate
    assert dispatcher.sent == [(run.target, run.ref, run.queue)]
    # A second create with the same id is a duplicate still, and sends nothing.
    again, duplicate = runs.create(project, task_request(project, public_id=run.run_id))
    assert duplicate and again.run_id == run.run_id
    assert len(dispatcher.sent) == 1


# -- workflow steps --------------------------------------------------------------------------------


@pytest.fixture
def state(
    engine: sa.Engine, runs: RunService, flaky: FlakyEventLog, dispatcher: RecordingDispatcher
) -> WorkflowService:
    return WorkflowService(
        engine, runs=runs, events=flaky, dispatcher=dispatcher, patience=PATIENCE
    )


def with_nodes(runs: RunService, state: WorkflowService, project: Project) -> Run:
    run, _ = runs.create(project, task_request(project))
    state.create(run.ref, ["a", "b"])
    state.create(run.ref, ["a", "b"])  # a repeat finds them
    return run


def step_events(flaky: FlakyEventLog, ref: RunRef) -> list[tuple[str, str, Any]]:
    return [
        (e.event_type, e.payload["stepName"], e.payload.get("status"))
        for e in flaky.read(ref, after=0, limit=100)
    ]


def test_a_step_claim_whose_answer_was_lost_is_found_by_its_owner_on_retry(
    engine: sa.Engine, runs: RunService, state: WorkflowService, project: Project
) -> None:
    run = with_nodes(runs, state, project)
    assert state.queue(run.ref, "a")
    with lose_answer(engine, updating_nodes) as lost:
        node = state.claim(run.ref, "a", owner="a", lease_seconds=60)
    assert lost
    assert node is not None and node.attempt == 1 and node.status is NodeStatus.RUNNING
    assert state.claim(run.ref, "a", owner="b", lease_seconds=60) is None


@pytest.mark.parametrize("inject", [lose_answer, fail_statement])
def test_a_step_outcome_whose_write_lost_its_answer_or_failed_is_recorded_once_with_its_event(
    engine: sa.Engine,
    runs: RunService,
    state: WorkflowService,
    flaky: FlakyEventLog,
    project: Project,
    inject: Callable[..., Any],
) -> None:
    run = with_nodes(runs, state, project)
    assert state.queue(run.ref, "a") and state.queue(run.ref, "b")
    for node_id in ("a", "b"):
        assert state.claim(run.ref, node_id, owner=node_id, lease_seconds=60) is not None
    with inject(engine, updating_nodes) as hit:
        assert state.complete(run.ref, "a", {"done": 1}, attempt=1, logs=None)
    assert hit
    with inject(engine, updating_nodes) as hit:
        assert state.requeue(run.ref, "b", attempt=1, error=RunError("again"), logs=None)
    assert hit
    nodes = state.nodes(run.ref)
    assert nodes["a"].status is NodeStatus.COMPLETED and nodes["a"].output == {"done": 1}
    assert nodes["b"].status is NodeStatus.QUEUED
    assert step_events(flaky, run.ref) == [
        (STEP_FINISHED, "a", "completed"),
        (STEP_FINISHED, "b", "failed"),
    ]


def test_a_step_event_whose_append_lost_its_answer_is_appended_once(
    runs: RunService, state: WorkflowService, flaky: FlakyEventLog, project: Project
) -> None:
    run = with_nodes(runs, state, project)
    assert state.queue(run.ref, "a")
    assert state.claim(run.ref, "a", owner="a", lease_seconds=60) is not None
    flaky.lose("append")
    assert state.fail(run.ref, "a", RunError("no"), attempt=1, logs=None)
    assert step_events(flaky, run.ref) == [(STEP_FINISHED, "a", "failed")]
