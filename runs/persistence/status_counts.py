"""How many runs are in each active status now, read from partial indexes only.

The indexes hold the few rows they serve, so the counts cost as much as there are active
runs, whatever the table's size: pending runs from ``ix_runs_pending`` (every pending run
has ``available_at``), running and waiting ones from ``ix_runs_leased`` (a claimed run keeps
its lease until it ends). Terminal statuses are not counted here: their number only grows
(``runs_finished_total`` counts them as they happen).
"""

from __future__ import annotations

import sqlalchemy as sa

from runs.domain.runs import RunStatus
from runs.persistence.tables import runs

COUNTED = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING)

_COUNTS = sa.union_all(
    sa.select(sa.literal(RunStatus.PENDING.value).label("status"), sa.func.count()).where(
        runs.c.status == RunStatus.PENDING.value, runs.c.available_at.is_not(None)
    ),
    sa.select(runs.c.status, sa.func.count())
    .where(
        runs.c.lease_expires_at.is_not(None),
        runs.c.status.in_([RunStatus.RUNNING.value, RunStatus.WAITING.value]),
    )
    .group_by(runs.c.status),
)


def active_counts(conn: sa.Connection) -> dict[RunStatus, int]:
    """Runs per active status (0 for a status no run has), in one statement."""
    counts = dict.fromkeys(COUNTED, 0)
    for status, count in conn.execute(_COUNTS):
        counts[RunStatus(status)] = int(count)
    return counts
