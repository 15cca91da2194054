"""Store functions for workflow nodes: conditional transitions, never read-modify-write."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from runs.domain.runs import RunError, RunRef, RunStatus
from runs.domain.text import storable
from runs.domain.workflows import NODE_ACTIVE, NodeRecord, NodeStatus
from runs.persistence.event_archive import of_run
from runs.persistence.tables import UTCDateTime, is_one_of, runs, workflow_nodes

_NODE_FIELDS = (
    "run_id",
    "node_id",
    "position",
    "status",
    "attempt",
    "arm",
    "output",
    "error",
    "logs",
    "wait_event",
    "deadline",
    "started_at",
    "completed_at",
)


def _record(row: Mapping[Any, Any]) -> NodeRecord:
    data = {k: row[k] for k in _NODE_FIELDS}
    data["status"] = NodeStatus(data["status"])
    data["error"] = RunError.from_json(data["error"])
    return NodeRecord(**data)


def insert_nodes(conn: sa.Connection, ref: RunRef, node_ids: Sequence[str], now: datetime) -> bool:
    """Create the nodes of a run once; False when they exist already."""
    exists = conn.execute(
        sa.select(sa.func.count()).where(of_run(workflow_nodes, ref))
    ).scalar_one()
    if exists:
        return False
    conn.execute(
        workflow_nodes.insert(),
        [
            {
                "project_id": ref.project_id,
                "run_id": ref.run_id,
                "node_id": node_id,
                "position": i,
                "status": NodeStatus.PENDING.value,
                "attempt": 0,
                "updated_at": now,
            }
            for i, node_id in enumerate(node_ids)
        ],
    )
    return True


def get_nodes(conn: sa.Connection, ref: RunRef) -> dict[str, NodeRecord]:
    rows = conn.execute(
        workflow_nodes.select()
        .where(of_run(workflow_nodes, ref))
        .order_by(workflow_nodes.c.position)
    ).mappings()
    return {r["node_id"]: _record(r) for r in rows}


def _key(table: sa.Table) -> sa.ColumnElement[bool]:
    return sa.and_(
        table.c.project_id == sa.bindparam("k_project_id"),
        table.c.run_id == sa.bindparam("k_run_id"),
        table.c.node_id == sa.bindparam("k_node_id"),
    )


@functools.cache
def _transition_statement(
    from_statuses: tuple[str, ...], fields: tuple[str, ...], with_attempt: bool
) -> sa.Update:
    """The UPDATE of one shape of transition, built once; each call binds its values."""
    query = workflow_nodes.update().where(
        _key(workflow_nodes), is_one_of(workflow_nodes.c.status, from_statuses)
    )
    if with_attempt:
        query = query.where(workflow_nodes.c.attempt == sa.bindparam("k_attempt"))
    return query.values(
        {name: sa.bindparam(f"v_{name}", type_=workflow_nodes.c[name].type) for name in fields}
    )


def transition(
    conn: sa.Connection,
    ref: RunRef,
    node_id: str,
    from_statuses: Iterable[NodeStatus],
    values: Mapping[str, Any],
    *,
    attempt: int | None = None,
) -> bool:
    """Move one node out of ``from_statuses`` (and ``attempt``, when given). True if it moved."""
    fields = tuple(sorted(values))
    query = _transition_statement(
        tuple(sorted(s.value for s in from_statuses)), fields, attempt is not None
    )
    params: dict[str, Any] = {
        "k_project_id": ref.project_id,
        "k_run_id": ref.run_id,
        "k_node_id": node_id,
        "k_attempt": attempt,
    }
    for name in fields:
        value = values[name]
        params[f"v_{name}"] = value.value if isinstance(value, NodeStatus) else storable(value)
    return conn.execute(query, params).rowcount == 1


def _claim_statement(condition: sa.ColumnElement[bool]) -> sa.Update:
    now = sa.bindparam("k_now", type_=UTCDateTime())
    return (
        workflow_nodes.update()
        .where(_key(workflow_nodes), condition)
        .values(
            status=NodeStatus.RUNNING.value,
            attempt=workflow_nodes.c.attempt + 1,
            started_at=sa.func.coalesce(workflow_nodes.c.started_at, now),
            lease_owner=sa.bindparam("k_worker"),
            lease_expires_at=sa.bindparam("k_lease", type_=UTCDateTime()),
            updated_at=now,
        )
        .returning(*workflow_nodes.c)
    )


_CLAIMS = {
    NodeStatus.QUEUED: _claim_statement(workflow_nodes.c.status == NodeStatus.QUEUED.value),
    NodeStatus.PENDING: _claim_statement(workflow_nodes.c.status == NodeStatus.PENDING.value),
    NodeStatus.RUNNING: _claim_statement(
        sa.and_(
            workflow_nodes.c.status == NodeStatus.RUNNING.value,
            workflow_nodes.c.lease_expires_at < sa.bindparam("k_now", type_=UTCDateTime()),
        )
    ),
}


def claim_node(
    conn: sa.Connection,
    ref: RunRef,
    node_id: str,
    *,
    now: datetime,
    worker: str,
    lease_until: datetime,
    from_status: NodeStatus = NodeStatus.QUEUED,
) -> NodeRecord | None:
    """Take a node for one attempt more: a queued one (its job arrived), a pending one (the
    job that ran the step before it goes on with it), or a running one whose lease expired
    (its worker died). ``None`` when the node is not in that state."""
    row = (
        conn.execute(
            _CLAIMS[from_status],
            {
                "k_project_id": ref.project_id,
                "k_run_id": ref.run_id,
                "k_node_id": node_id,
                "k_now": now,
                "k_worker": worker,
                "k_lease": lease_until,
            },
        )
        .mappings()
        .first()
    )
    return _record(row) if row is not None else None


def claimed_by(conn: sa.Connection, ref: RunRef, node_id: str, owner: str) -> NodeRecord | None:
    """The node as the claim held by ``owner`` left it, when that claim took effect (a
    retry of a claim whose answer was lost finds it here)."""
    row = (
        conn.execute(
            workflow_nodes.select().where(
                of_run(workflow_nodes, ref),
                workflow_nodes.c.node_id == node_id,
                workflow_nodes.c.status == NodeStatus.RUNNING.value,
                workflow_nodes.c.lease_owner == owner,
            )
        )
        .mappings()
        .first()
    )
    return _record(row) if row is not None else None


def moved_as(conn: sa.Connection, ref: RunRef, node_id: str, values: Mapping[str, Any]) -> bool:
    """Whether the node holds the ``status`` and ``updated_at`` of ``values``: a transition
    that wrote them took effect (a retry whose first answer was lost asks this)."""
    row = conn.execute(
        sa.select(workflow_nodes.c.status, workflow_nodes.c.updated_at).where(
            of_run(workflow_nodes, ref), workflow_nodes.c.node_id == node_id
        )
    ).first()
    status = values["status"]
    wanted = status.value if isinstance(status, NodeStatus) else status
    return row is not None and row.status == wanted and row.updated_at == values["updated_at"]


def renew_node_lease(
    conn: sa.Connection, ref: RunRef, node_id: str, attempt: int, lease_until: datetime
) -> bool:
    result = conn.execute(
        workflow_nodes.update()
        .where(
            of_run(workflow_nodes, ref),
            workflow_nodes.c.node_id == node_id,
            workflow_nodes.c.status == NodeStatus.RUNNING.value,
            workflow_nodes.c.attempt == attempt,
        )
        .values(lease_expires_at=lease_until)
    )
    return result.rowcount == 1


def lease_of(conn: sa.Connection, ref: RunRef, node_id: str) -> datetime | None:
    return conn.execute(
        sa.select(workflow_nodes.c.lease_expires_at).where(
            of_run(workflow_nodes, ref), workflow_nodes.c.node_id == node_id
        )
    ).scalar_one_or_none()


def _stale(before: datetime, lapsed_before: datetime | None) -> Any:
    """Queued since before ``before``, or (with ``lapsed_before``) running on a lease that ran
    out before it (its worker died), and not re-sent since ``before``."""
    queued = workflow_nodes.c.status == NodeStatus.QUEUED.value
    if lapsed_before is None:
        return sa.and_(workflow_nodes.c.updated_at < before, queued)
    return sa.and_(
        workflow_nodes.c.updated_at < before,
        sa.or_(
            queued,
            sa.and_(
                workflow_nodes.c.status == NodeStatus.RUNNING.value,
                workflow_nodes.c.lease_expires_at < lapsed_before,
            ),
        ),
    )


def stale_nodes(
    conn: sa.Connection, before: datetime, lapsed_before: datetime | None, limit: int
) -> list[tuple[RunRef, str, str, str]]:
    """(run, node_id, target, queue) of stale nodes (see ``_stale``) in live runs."""
    rows = conn.execute(
        sa.select(
            workflow_nodes.c.project_id,
            workflow_nodes.c.run_id,
            workflow_nodes.c.node_id,
            runs.c.target,
            runs.c.queue,
        )
        .join(
            runs,
            sa.and_(
                runs.c.project_id == workflow_nodes.c.project_id,
                runs.c.run_id == workflow_nodes.c.run_id,
            ),
        )
        .where(
            _stale(before, lapsed_before),
            is_one_of(runs.c.status, [RunStatus.RUNNING.value, RunStatus.WAITING.value]),
        )
        .order_by(workflow_nodes.c.updated_at)
        .limit(limit)
    )
    return [(RunRef(r.project_id, r.run_id), r.node_id, r.target, r.queue) for r in rows]


def touch_stale(
    conn: sa.Connection,
    ref: RunRef,
    node_id: str,
    before: datetime,
    lapsed_before: datetime | None,
    now: datetime,
) -> bool:
    """Take the right to re-send a stale node's job; one sweeper wins."""
    result = conn.execute(
        workflow_nodes.update()
        .where(
            of_run(workflow_nodes, ref),
            workflow_nodes.c.node_id == node_id,
            _stale(before, lapsed_before),
        )
        .values(updated_at=now)
    )
    return result.rowcount == 1


def cancel_active_nodes(conn: sa.Connection, ref: RunRef, now: datetime) -> None:
    """Every node that has not ended ends: active ones cancelled, pending ones skipped."""
    conn.execute(
        workflow_nodes.update()
        .where(
            of_run(workflow_nodes, ref),
            is_one_of(workflow_nodes.c.status, [s.value for s in NODE_ACTIVE]),
        )
        .values(status=NodeStatus.CANCELLED.value, completed_at=now, updated_at=now)
    )
    conn.execute(
        workflow_nodes.update()
        .where(
            of_run(workflow_nodes, ref),
            workflow_nodes.c.status == NodeStatus.PENDING.value,
        )
        .values(status=NodeStatus.SKIPPED.value, completed_at=now, updated_at=now)
    )


def set_run_waiting(conn: sa.Connection, ref: RunRef, reason: str | None, now: datetime) -> bool:
    """running <-> waiting, with the reason while waiting (``None`` resumes)."""
    source, target = (
        (RunStatus.RUNNING, RunStatus.WAITING) if reason else (RunStatus.WAITING, RunStatus.RUNNING)
    )
    result = conn.execute(
        runs.update()
        .where(of_run(runs, ref), runs.c.status == source.value)
        .values(status=target.value, waiting_reason=reason, updated_at=now)
    )
    return result.rowcount == 1
