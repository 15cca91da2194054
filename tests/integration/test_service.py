"""The run use cases on a real database (SQLite and PostgreSQL) and the real Redis."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from runs.domain.clock import utcnow
from runs.domain.definitions import Definition
from runs.domain.errors import NotFound, PayloadTooLarge, UnknownTarget
from runs.domain.events import started_events
from runs.domain.projects import Project
from runs.domain.runs import ErrorCode, Outcome, RunError, RunKind, RunStatus
from runs.domain.workflows import NodeStatus
from runs.persistence import nodes, records
from runs.persistence.tables import runs as runs_table
from runs.services.attempts import AttemptService
from runs.services.catalog import DefinitionCatalog
from runs.services.runs import RunService
from runs.streams.event_log import RedisEventLog
from runs.testing import RecordingDispatcher
from tests.support.helpers import task_request
from tests.support.redis_hygiene import QUEUE, SLOW_QUEUE


def test_submit_commits_the_run_before_its_job_is_sent(
    service: RunService, project: Project, dispatcher: RecordingDispatcher, engine: sa.Engine
) -> None:
    seen_from_another_connection: list[str | None] = []

    def dispatch(target: str, run_id: str, queue: str, **_: object) -> None:
        with engine.connect() as conn:
            found = records.get_run(conn, run_id)
        seen_from_another_connection.append(found.status.value if found else None)

    dispatcher.dispatch = dispatch  # type: ignore[method-assign]
    run, duplicate = service.create(project, task_request(project))
    assert not duplicate
    assert seen_from_another_connection == ["pending"]
    assert run.status is RunStatus.PENDING and run.root_run_id == run.run_id


def test_a_broker_failure_at_accept_time_leaves_the_run_pending_not_lost(
    service: RunService, project: Project, dispatcher: RecordingDispatcher
) -> None:
    dispatcher.fail = True
    run, _ = service.create(project, task_request(project))
    assert service.get(project, run.run_id).status is RunStatus.PENDING


def test_routing_sends_each_target_to_its_queue(
    service: RunService, project: Project, dispatcher: RecordingDispatcher
) -> None:
    echo, _ = service.create(project, task_request(project))
    sleep, _ = service.create(project, task_request(project, "task:sleep"))
    assert dispatcher.sent == [
        ("task:echo", echo.ref, QUEUE),
        ("task:sleep", sleep.ref, SLOW_QUEUE),
    ]


def test_public_id_makes_a_repeated_create_a_duplicate(
    service: RunService, project: Project, dispatcher: RecordingDispatcher
) -> None:
    first, dup1 = service.create(
        project, task_request(project, public_id="run_fixed-1" + project.id)
    )
    again, dup2 = service.create(project, task_request(project, public_id=first.run_id))
    assert (dup1, dup2) == (False, True)
    assert again.run_id == first.run_id
    assert len(dispatcher.sent) == 1


def test_the_same_public_id_in_two_projects_makes_two_independent_runs(
    service: RunService, project: Project, other_project: Project
) -> None:
    mine, dup = service.create(project, task_request(project, public_id="run_shared"))
    theirs, their_dup = service.create(
        other_project, task_request(other_project, public_id="run_shared", config={"n": 2})
    )
    assert not dup and not their_dup
    assert (mine.run_id, theirs.run_id) == ("run_shared", "run_shared")
    assert service.get(project, "run_shared").config == {"hello": "world"}
    assert service.get(other_project, "run_shared").config == {"n": 2}
    cancelled, _ = service.cancel(other_project, "run_shared")
    assert cancelled
    assert service.get(project, "run_shared").status is RunStatus.PENDING


def test_unknown_targets_and_oversized_config_are_refused_and_change_nothing(
    service: RunService, project: Project, engine: sa.Engine
) -> None:
    with pytest.raises(UnknownTarget):
        service.create(project, task_request(project, "task:nope"))
    with pytest.raises(PayloadTooLarge):
        service.create(project, task_request(project, config={"blob": "x" * 5000}))
    with engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).where(runs_table.c.project_id == project.id)
        ).scalar_one()
    assert count == 0


def test_another_projects_run_is_not_found(
    service: RunService, project: Project, other_project: Project
) -> None:
    run, _ = service.create(project, task_request(project))
    with pytest.raises(NotFound):
        service.get(other_project, run.run_id)
    with pytest.raises(NotFound):
        service.cancel(other_project, run.run_id)
    with pytest.raises(NotFound):
        service.events(other_project, run.run_id, after=0, limit=10)


def test_a_claim_is_taken_once(
    service: RunService, attempts: AttemptService, project: Project
) -> None:
    run, _ = service.create(project, task_request(project))
    first = attempts.claim(run.ref, owner="w1", lease_seconds=30)
    second = attempts.claim(run.ref, owner="w2", lease_seconds=30)
    assert first is not None and first.attempt == 1 and first.started_at is not None
    assert second is None


def test_cancelling_a_pending_run_means_it_never_starts(
    service: RunService, attempts: AttemptService, project: Project
) -> None:
    run, _ = service.create(project, task_request(project))
    cancelled, after = service.cancel(project, run.run_id)
    assert cancelled and after.status is RunStatus.CANCELLED and after.completed_at is not None
    assert after.error == RunError("Run cancelled", code=ErrorCode.CANCELLED)
    assert attempts.claim(run.ref, owner="w", lease_seconds=30) is None
    page = service.events(project, run.run_id, after=0, limit=10)
    assert [e.event_type for e in page.items] == ["RUN_ERROR"]


def test_a_late_result_cannot_overwrite_a_cancelled_run(
    service: RunService, attempts: AttemptService, project: Project
) -> None:
    run, _ = service.create(project, task_request(project))
    claimed = attempts.claim(run.ref, owner="w", lease_seconds=30)
    assert claimed is not None
    assert attempts.emit(run.ref, started_events(run.target))
    cancelled, _ = service.cancel(project, run.run_id)
    assert cancelled
    assert not attempts.finish(
        claimed, Outcome(RunStatus.COMPLETED, output={"late": True}), owner="w"
    )
    final = service.get(project, run.run_id)
    assert final.status is RunStatus.CANCELLED and final.output is None
    types = [e.event_type for e in service.events(project, run.run_id, after=0, limit=20).items]
    assert types == ["RUN_STARTED", "STEP_STARTED", "STEP_FINISHED", "RUN_ERROR"]


def test_terminal_is_final_cancel_after_completion_changes_nothing(
    service: RunService, attempts: AttemptService, project: Project
) -> None:
    run, _ = service.create(project, task_request(project))
    claimed = attempts.claim(run.ref, owner="w", lease_seconds=30)
    assert claimed is not None
    assert attempts.finish(
        claimed, Outcome(RunStatus.COMPLETED, output={"ok": 1}, exit_code=0), owner="w"
    )
    before = service.get(project, run.run_id)
    cancelled, after = service.cancel(project, run.run_id)
    assert not cancelled and after == before
    assert not attempts.finish(
        claimed, Outcome(RunStatus.FAILED, error=RunError("again")), owner="w"
    )
    assert service.get(project, run.run_id) == before


def test_finished_events_are_read_from_sql_when_the_stream_is_gone(
    service: RunService, attempts: AttemptService, project: Project, event_log: RedisEventLog
) -> None:
    run, _ = service.create(project, task_request(project))
    claimed = attempts.claim(run.ref, owner="w", lease_seconds=30)
    assert claimed is not None
    attempts.emit(run.ref, started_events(run.target))
    attempts.finish(claimed, Outcome(RunStatus.COMPLETED, output=None, exit_code=0), owner="w")
    event_log.client.delete(f"runs:{{{run.ref.key}}}:events", f"runs:{{{run.ref.key}}}:meta")
    page = service.events(project, run.run_id, after=0, limit=10)
    assert [e.event_id for e in page.items] == [1, 2, 3, 4]
    assert [e.event_type for e in page.items][-1] == "RUN_FINISHED"


def test_event_pages_are_exclusive_and_ordered(
    service: RunService, attempts: AttemptService, project: Project
) -> None:
    run, _ = service.create(project, task_request(project))
    assert attempts.claim(run.ref, owner="w", lease_seconds=30) is not None
    attempts.emit(run.ref, started_events(run.target))
    from runs.domain.events import log_event

    attempts.emit(run.ref, [log_event(f"line {i}") for i in range(5)])
    first = service.events(project, run.run_id, after=0, limit=3)
    assert [e.event_id for e in first.items] == [1, 2, 3] and first.next == "3"
    second = service.events(project, run.run_id, after=3, limit=3)
    assert [e.event_id for e in second.items] == [4, 5, 6] and second.next == "6"
    last = service.events(project, run.run_id, after=6, limit=3)
    assert [e.event_id for e in last.items] == [7] and last.next is None


def test_finishing_a_workflow_run_ends_its_nodes_in_the_same_transaction(
    service: RunService, attempts: AttemptService, project: Project, engine: sa.Engine
) -> None:
    """When a workflow's terminal record is visible, none of its nodes is still active."""
    catalog_has_workflow(engine)
    run, _ = service.create(
        project,
        task_request(
            project,
            "workflow:finishing",
            kind=RunKind.WORKFLOW,
            workflow_id="finishing",
            config=None,
        ),
    )
    claimed = attempts.claim(run.ref, owner="w", lease_seconds=60)
    assert claimed is not None
    now = utcnow()
    with engine.begin() as conn:
        nodes.insert_nodes(conn, run.ref, ["done", "busy", "later"], now)
        for node_id, status in (("done", "completed"), ("busy", "running")):
            assert nodes.transition(
                conn, run.ref, node_id, [NodeStatus.PENDING], {"status": status, "updated_at": now}
            )
    failed = Outcome(RunStatus.FAILED, error=RunError("boom", code="x"))
    assert attempts.finish(claimed, failed, owner="w")
    with engine.connect() as conn:
        statuses = {k: n.status.value for k, n in nodes.get_nodes(conn, run.ref).items()}
    assert statuses == {"done": "completed", "busy": "cancelled", "later": "skipped"}


def catalog_has_workflow(engine: sa.Engine) -> None:
    DefinitionCatalog(engine, cache_seconds=0).register(
        [Definition(target="workflow:finishing", kind="workflow")]
    )
