"""What tests of parked workflow runs share: a run parked the way the engine parks it."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from runs.domain.clock import utcnow
from runs.domain.runs import RunRef
from runs.domain.workflows import NodeStatus
from runs.persistence import nodes, transitions
from runs.persistence.tables import runs as runs_table

EVENT = "payment.received"
# The nodes of a parked run: "review" waits for an approval, "hook" for EVENT, "later" has not
# started yet.
NODES = ("review", "hook", "later")


def ref_of(engine: sa.Engine, run_id: str) -> RunRef:
    """The run of this id (the tests' ids are unique across projects)."""
    with engine.connect() as conn:
        project_id = conn.execute(
            sa.select(runs_table.c.project_id).where(runs_table.c.run_id == run_id)
        ).scalar_one()
    return RunRef(project_id, run_id)


def park(engine: sa.Engine, run_id: str, *, run_waits: bool = True) -> None:
    """Do what the engine does when a workflow reaches its waits: claim the run, create its
    nodes, park "review" on an approval and "hook" on EVENT, then (``run_waits``) mark the run
    waiting."""
    now = utcnow()
    ref = ref_of(engine, run_id)
    with engine.begin() as conn:
        claimed = transitions.claim_run(
            conn, ref, worker="test-worker", lease_until=now + timedelta(minutes=5), now=now
        )
        assert claimed is not None, "the run was not pending"
        assert nodes.insert_nodes(conn, ref, list(NODES), now)
        assert nodes.transition(
            conn, ref, "review", [NodeStatus.PENDING], {"status": "waiting", "updated_at": now}
        )
        assert nodes.transition(
            conn,
            ref,
            "hook",
            [NodeStatus.PENDING],
            {"status": "waiting", "wait_event": EVENT, "updated_at": now},
        )
        if run_waits:
            assert nodes.set_run_waiting(conn, ref, "approval:review", now)
