"""Schedules on PostgreSQL and SQLite, with an injected clock: time zones and daylight-saving
changes, one-time schedules, pause and resume, concurrency policies, catch-up after an
outage, max_runs, and exactly one run per occurrence when firers race."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from runs.domain.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RunsError,
    UnknownTarget,
)
from runs.domain.projects import Project
from runs.domain.runs import RunStatus
from runs.domain.schedules import ScheduleStatus
from runs.persistence import schedules as store
from runs.persistence.records import RunFilters
from runs.persistence.tables import runs as runs_table
from runs.persistence.tables import schedule_firings
from runs.persistence.tables import schedules as schedules_table
from runs.scheduling.catalogue import ScheduleService
from runs.scheduling.firing import ScheduleFirer
from runs.scheduling.recurrence import Recurrence
from runs.services.runs import RunService

GRACE = 30.0


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def schedules(engine: sa.Engine, service: RunService, clock: Clock) -> Iterator[ScheduleService]:
    yield ScheduleService(engine, runs=service, clock=clock)
    # A firer fires every project's due schedules: leave none for the next test's clock, and
    # no pending run for a worker's sweeper to send (it sweeps the whole database).
    with engine.begin() as conn:
        conn.execute(schedule_firings.delete())
        conn.execute(schedules_table.delete())
        conn.execute(runs_table.delete().where(runs_table.c.schedule_id.is_not(None)))


@pytest.fixture
def firer(engine: sa.Engine, service: RunService, clock: Clock) -> ScheduleFirer:
    return make_firer(engine, service, clock)


def make_firer(
    engine: sa.Engine, service: RunService, clock: Callable[[], datetime]
) -> ScheduleFirer:
    return ScheduleFirer(
        engine,
        runs=service,
        grace_seconds=GRACE,
        batch_size=50,
        max_catchup_runs=100,
        clock=clock,
    )


def new(schedules: ScheduleService, project: Project, **fields: Any) -> Any:
    body: dict[str, Any] = {"name": "nightly", "target": {"kind": "task", "id": "echo"}}
    body.update(fields)
    return schedules.create(project, body)


def fired_at(engine: sa.Engine, schedule_id: str) -> list[datetime]:
    """The occurrences that created a run, oldest first."""
    query = (
        sa.select(schedule_firings.c.scheduled_for)
        .where(
            schedule_firings.c.schedule_id == schedule_id,
            schedule_firings.c.outcome == "created",
            schedule_firings.c.scheduled_for.is_not(None),
        )
        .order_by(schedule_firings.c.scheduled_for)
    )
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def runs_of(engine: sa.Engine, project: Project, schedule_id: str) -> list[dict[str, Any]]:
    query = sa.select(runs_table).where(
        runs_table.c.project_id == project.id, runs_table.c.schedule_id == schedule_id
    )
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def drive(firer: ScheduleFirer, clock: Clock, until: datetime, step: timedelta) -> None:
    """A scheduler that fires every ``step`` until ``until``."""
    while clock.now < until:
        clock.now = min(until, clock.now + step)
        firer.fire_due()


def local(moments: list[datetime], zone: str) -> list[str]:
    return [m.astimezone(ZoneInfo(zone)).strftime("%m-%d %H:%M %Z") for m in moments]


# -- time zones -----------------------------------------------------------------------------


def test_a_daily_time_skipped_by_spring_forward_fires_once_at_the_end_of_the_gap(
    schedules: ScheduleService,
    firer: ScheduleFirer,
    clock: Clock,
    project: Project,
    engine: sa.Engine,
) -> None:
    clock.now = datetime(2026, 3, 27, 12, tzinfo=UTC)
    s = new(schedules, project, schedule="30 2 * * *", timezone="Europe/Berlin")
    drive(firer, clock, datetime(2026, 3, 31, 12, tzinfo=UTC), timedelta(minutes=10))
    assert local(fired_at(engine, s.id), "Europe/Berlin") == [
        "03-28 02:30 CET",
        "03-29 03:00 CEST",  # 02:30 did not exist that night
        "03-30 02:30 CEST",
        "03-31 02:30 CEST",
    ]


def test_a_time_repeated_by_fall_back_fires_once(
    schedules: ScheduleService,
    firer: ScheduleFirer,
    clock: Clock,
    project: Project,
    engine: sa.Engine,
) -> None:
    clock.now = datetime(2026, 10, 24, 12, tzinfo=UTC)
    s = new(schedules, project, schedule="30 2 * * *", timezone="Europe/Berlin")
    drive(firer, clock, datetime(2026, 10, 26, 12, tzinfo=UTC), timedelta(minutes=10))
    assert local(fired_at(engine, s.id), "Europe/Berlin") == [
        "10-25 02:30 CEST",  # the first 02:30; the second one, an hour later, does not fire
        "10-26 02:30 CET",
    ]


def test_new_york_hourly_crosses_both_changes_without_doubles_or_extra_gaps(
    schedules: ScheduleService,
    firer: ScheduleFirer,
    clock: Clock,
    project: Project,
    engine: sa.Engine,
) -> None:
    clock.now = datetime(2026, 3, 8, 5, 10, tzinfo=UTC)  # 00:10 EST
    spring = new(schedules, project, schedule="30 * * * *", timezone="America/New_York")
    drive(firer, clock, datetime(2026, 3, 8, 9, 0, tzinfo=UTC), timedelta(minutes=5))
    assert local(fired_at(engine, spring.id), "America/New_York") == [
        "03-08 00:30 EST",
        "03-08 01:30 EST",
        "03-08 03:00 EDT",  # 02:30 did not exist: it fires once, when the gap ends
        "03-08 03:30 EDT",
        "03-08 04:30 EDT",
    ]
    clock.now = datetime(2026, 11, 1, 4, 10, tzinfo=UTC)  # 00:10 EDT
    fall = new(schedules, project, name="fall", schedule="30 * * * *", timezone="America/New_York")
    drive(firer, clock, datetime(2026, 11, 1, 9, 0, tzinfo=UTC), timedelta(minutes=5))
    assert local(fired_at(engine, fall.id), "America/New_York") == [
        "11-01 00:30 EDT",
        "11-01 01:30 EDT",  # 01:30 EST, an hour later, is the same local time: no second run
        "11-01 02:30 EST",
        "11-01 03:30 EST",
    ]


def test_a_gap_swallowing_several_times_fires_once_for_all_of_them() -> None:
    every_quarter = Recurrence(timezone="Europe/Berlin", cron="*/15 * * * *")
    found = every_quarter.between(
        datetime(2026, 3, 29, 0, 40, tzinfo=UTC), datetime(2026, 3, 29, 1, 20, tzinfo=UTC), 10
    )
    assert local(found, "Europe/Berlin") == [
        "03-29 01:45 CET",
        "03-29 03:00 CEST",  # 02:00, 02:15, 02:30 and 02:45 did not exist: one run
        "03-29 03:15 CEST",
    ]


def test_intervals_run_in_absolute_time_across_a_change() -> None:
    hourly = Recurrence(interval_seconds=3600, anchor=datetime(2026, 3, 29, 0, 0, tzinfo=UTC))
    found = hourly.between(
        datetime(2026, 3, 29, 0, 0, tzinfo=UTC), datetime(2026, 3, 29, 3, 0, tzinfo=UTC), 10
    )
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(found)] == [3600] * 3


# -- lifecycle ------------------------------------------------------------------------------


def test_a_one_time_schedule_fires_once_then_is_completed(
    schedules: ScheduleService,
    firer: ScheduleFirer,
    clock: Clock,
    project: Project,
    engine: sa.Engine,
    service: RunService,
) -> None:
    at = clock.now + timedelta(minutes=5)
    s = new(schedules, project, run_at=at)
    assert s.next_run_at == at
    drive(firer, clock, at - timedelta(seconds=1), timedelta(seconds=30))
    assert fired_at(engine, s.id) == []
    drive(firer, clock, at + timedelta(hours=2), timedelta(seconds=30))
    done = schedules.get(project, s.id)
    assert (done.status, done.run_count, done.next_run_at) == (ScheduleStatus.COMPLETED, 1, None)
    assert done.completed_at is not None
    [run] = runs_of(engine, project, s.id)
    assert (run["trigger_kind"], run["trigger_id"], run["schedule_id"]) == ("schedule", s.id, s.id)
    listed = service.list(project, RunFilters(schedule_id=s.id), cursor=None, limit=10)
    assert [r.run_id for r in listed.items] == [run["run_id"]]


def test_a_pass_fires_many_schedules_with_one_write_of_each_kind(
    schedules: ScheduleService,
    firer: ScheduleFirer,
    clock: Clock,
    project: Project,
    engine: sa.Engine,
) -> None:
    at = clock.now + timedelta(minutes=1)
    made = [new(schedules, project, name=f"s{i}", run_at=at) for i in range(12)]
    made.append(new(schedules, project, name="minutely", interval_seconds=60))
    clock.advance(minutes=2)
    result = firer.fire_pass()
    assert result.schedules == 13 and len(result.created) >= 13
    for s in made:  # the one-time ones completed, the interval one moved on
        fired = fired_at(engine, s.id)
        assert fired and len(runs_of(engine, project, s.id)) == len(fired)
        assert schedules.get(project, s.id).run_count == len(fired)
    assert firer.fire_pass().created == []


def test_advancing_many_schedules_is_refused_whole_when_one_moved_on_meanwhile(
    schedules: ScheduleService, clock: Clock, project: Project, engine: sa.Engine
) -> None:
    made = [new(schedules, project, name=f"s{i}", interval_seconds=60) for i in range(3)]
    stale = [schedules.get(project, s.id) for s in made]
    later = clock.now + timedelta(hours=1)
    advances = [
        store.Advance(s, {"next_run_at": later, "updated_at": clock.now}, 1, 0) for s in stale
    ]
    with engine.begin() as conn:
        assert store.advance_many(conn, advances[:1])  # moves the first one on
    with engine.connect() as conn:
        assert not store.advance_many(conn, advances)  # the first one moved: refused
        conn.rollback()
    with engine.begin() as conn:
        assert store.advance_many(conn, advances[1:])
    counts = [schedules.get(project, s.id).run_count for s in made]
    assert counts == [1, 1, 1]


def test_max_runs_completes_the_schedule(
    schedules: ScheduleService,
    firer: ScheduleFirer,
    clock: Clock,
    project: Project,
    engine: sa.Engine,
) -> None:
    s = new(schedules, project, interval_seconds=60, max_runs=3)
    drive(firer, clock, clock.now + timedelta(minutes=10), timedelta(seconds=20))
    done = schedules.get(project, s.id)
    assert (done.status, done.run_count, len(fired_at(engine, s.id))) == (
        ScheduleStatus.COMPLETED,
        3,
        3,
    )


def test_pausing_stops_occurrences_and_resuming_under_skip_does_not_replay_the_pause(
    schedules: ScheduleService,
    firer: ScheduleFirer,
    clock: Clock,
    project: Project,
    engine: sa.Engine,
) -> None:
    s = new(schedules, project, interval_seconds=60, catchup="skip")
    drive(firer, clock, clock.now + timedelta(minutes=3), timedelta(seconds=10))
    assert len(fired_at(engine, s.id)) == 3
    paused = schedules.update(project, s.id, {"status": "paused"})
    assert paused.status is ScheduleStatus.PAUSED and paused.paused_at == clock.now
    drive(firer, clock, clock.now + timedelta(minutes=30), timedelta(seconds=10))
    assert len(fired_at(engine, s.id)) == 3
    resumed = schedules.update(project, s.id, {"status": "active"})
    assert resumed.paused_at is None
    drive(firer, clock, clock.now + timedelta(minutes=2), timedelta(seconds=10))
    fired = fired_at(engine, s.id)
    assert len(fired) == 5  # the two after resuming, none of the paused half hour
    assert fired[3] > clock.now - timedelta(minutes=2, seconds=GRACE)


def test_resuming_under_latest_runs_the_newest_missed_occurrence_once(
    schedules: ScheduleService,
    firer: ScheduleFirer,
    clock: Clock,
    project: Project,
    engine: sa.Engine,
) -> None:
    s = new(schedules, project, interval_seconds=60)  # catchup "latest" by default
    schedules.update(project, s.id, {"status": "paused"})
    clock.advance(minutes=30)
    schedules.update(project, s.id, {"status": "active"})
    firer.fire_due()
    assert fired_at(engine, s.id) == [s.next_run_at + timedelta(minutes=29)]


# -- catch-up after an outage -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("catchup", "window", "expected"),
    [
        ("skip", None, []),
        ("latest", None, [5]),
        ("all", None, [1, 2, 3, 4, 5]),
        ("all", 200, [3, 4, 5]),  # only what falls inside the window
        ("latest", 30, []),  # the newest missed one is older than the window
    ],
)
def test_each_catchup_mode_after_a_five_minute_outage(
    schedules: ScheduleService,
    firer: ScheduleFirer,
    clock: Clock,
    project: Project,
    engine: sa.Engine,
    catchup: str,
    window: int | None,
    expected: list[int],
) -> None:
    start = clock.now
    s = new(
        schedules,
        project,
        interval_seconds=60,
        catchup=catchup,
        catchup_window_seconds=window,
    )
    clock.advance(minutes=5, seconds=45)  # the scheduler was down; minute 5 is 45 s late
    firer.fire_due()
    firer.fire_due()  # a second pass fires nothing twice
    assert fired_at(engine, s.id) == [start + timedelta(minutes=m) for m in expected]
    assert schedules.get(project, s.id).next_run_at == start + timedelta(minutes=6)


def test_catching_up_all_is_bounded_per_pass_and_continues(
    engine: sa.Engine,
    service: RunService,
    schedules: ScheduleService,
    clock: Clock,
    project: Project,
) -> None:
    start = clock.now
    s = new(schedules, project, interval_seconds=60, catchup="all")
    clock.advance(hours=4)
    small = ScheduleFirer(
        engine, runs=service, grace_seconds=GRACE, batch_size=50, max_catchup_runs=100, clock=clock
    )
    assert len(small.fire_pass().created) == 100
    while small.fire_due():  # the scheduler's next rounds, at once: the next one is due
        pass
    fired = fired_at(engine, s.id)
    assert fired == [start + timedelta(minutes=m) for m in range(1, 241)]


# -- concurrency policies ---------------------------------------------------------------------


def end_runs(engine: sa.Engine, project: Project, schedule_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            runs_table.update()
            .where(runs_table.c.project_id == project.id, runs_table.c.schedule_id == schedule_id)
            .values(status=RunStatus.COMPLETED.value)
        )


def test_forbid_skips_an_occurrence_while_an_earlier_run_has_not_ended_and_counts_it(
    schedules: ScheduleService,
    firer: ScheduleFirer,
    clock: Clock,
    project: Project,
    engine: sa.Engine,
) -> None:
    s = new(schedules, project, interval_seconds=60, concurrency_policy="Forbid")
    drive(firer, clock, clock.now + timedelta(minutes=3), timedelta(seconds=20))
    assert len(runs_of(engine, project, s.id)) == 1  # the first never ended
    assert schedules.get(project, s.id).skipped_count == 2
    end_runs(engine, project, s.id)
    drive(firer, clock, clock.now + timedelta(minutes=1), timedelta(seconds=20))
    assert len(runs_of(engine, project, s.id)) == 2


def test_replace_cancels_the_earlier_run_then_starts(
    schedules: ScheduleService,
    firer: ScheduleFirer,
    clock: Clock,
    project: Project,
    engine: sa.Engine,
    dispatcher: Any,
) -> None:
    s = new(schedules, project, interval_seconds=60, concurrency_policy="Replace")
    drive(firer, clock, clock.now + timedelta(minutes=2), timedelta(seconds=20))
    found = sorted(runs_of(engine, project, s.id), key=lambda r: r["created_at"])
    assert [r["status"] for r in found] == ["cancelled", "pending"]
    assert [ref.run_id for _, ref, _ in dispatcher.sent[-2:]] == [r["run_id"] for r in found]


def test_allow_starts_regardless(
    schedules: ScheduleService,
    firer: ScheduleFirer,
    clock: Clock,
    project: Project,
    engine: sa.Engine,
) -> None:
    s = new(schedules, project, interval_seconds=60)
    drive(firer, clock, clock.now + timedelta(minutes=3), timedelta(seconds=20))
    assert [r["status"] for r in runs_of(engine, project, s.id)] == ["pending"] * 3


# -- outcomes, triggers, walls ----------------------------------------------------------------


def test_the_schedule_learns_its_last_success_and_failure(
    schedules: ScheduleService,
    firer: ScheduleFirer,
    clock: Clock,
    project: Project,
    engine: sa.Engine,
) -> None:
    s = new(schedules, project, interval_seconds=60)
    drive(firer, clock, clock.now + timedelta(minutes=2), timedelta(seconds=20))
    first, second = sorted(runs_of(engine, project, s.id), key=lambda r: r["created_at"])
    ended = clock.now
    with engine.begin() as conn:
        for run, status, error in (
            (first, "completed", None),
            (second, "failed", {"message": "boom", "code": "task_failed"}),
        ):
            conn.execute(
                runs_table.update()
                .where(
                    runs_table.c.project_id == project.id,
                    runs_table.c.run_id == run["run_id"],
                )
                .values(status=status, error=error, completed_at=ended)
            )
    assert firer.settle() == 2
    assert firer.settle() == 0
    got = schedules.get(project, s.id)
    assert got.last_successful_at == ended
    assert (got.last_failure_at, got.last_failure_code, got.last_failure_message) == (
        ended,
        "task_failed",
        "boom",
    )
    assert got.last_failure_run_id == second["run_id"]


def test_a_trigger_with_the_same_key_returns_the_same_run(
    schedules: ScheduleService, project: Project, engine: sa.Engine
) -> None:
    s = new(schedules, project, schedule="0 3 * * *")
    first = schedules.trigger(project, s.id, idempotency_key="k-1", run_name="now")
    again = schedules.trigger(project, s.id, idempotency_key="k-1", run_name="now")
    other = schedules.trigger(project, s.id, idempotency_key="k-2", run_name=None)
    assert first.run_id == again.run_id != other.run_id
    assert first.name == "now" and first.trigger_kind == "schedule"
    assert schedules.get(project, s.id).run_count == 2
    assert len(runs_of(engine, project, s.id)) == 2


def test_another_projects_schedule_is_not_found(
    schedules: ScheduleService, project: Project, other_project: Project
) -> None:
    s = new(schedules, project, schedule="0 3 * * *")
    for call in (
        lambda: schedules.get(other_project, s.id),
        lambda: schedules.update(other_project, s.id, {"status": "paused"}),
        lambda: schedules.delete(other_project, s.id),
        lambda: schedules.trigger(other_project, s.id, idempotency_key="k", run_name=None),
    ):
        with pytest.raises(NotFound):
            call()
    assert schedules.get(project, s.id).status is ScheduleStatus.ACTIVE


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"schedule": "61 * * * *"}, "schedule"),
        ({"schedule": "* * * *"}, "schedule"),
        ({"schedule": "0 0 30 feb *"}, "schedule"),
        ({"schedule": "0 3 * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ({"schedule": "0 3 * * *", "interval_seconds": 60}, "schedule"),
        ({}, "schedule"),
        ({"run_at": datetime(2020, 1, 1, tzinfo=UTC)}, "run_at"),
        ({"schedule": "0 3 * * *", "target": {"kind": "task", "id": "a b"}}, "target.id"),
        ({"schedule": "0 3 * * *", "input": "x" * 5000}, "input"),
    ],
)
def test_bad_schedules_are_refused_naming_the_field_and_nothing_is_stored(
    schedules: ScheduleService, project: Project, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(RunsError) as refused:
        new(schedules, project, **fields)
    assert isinstance(refused.value, PayloadTooLarge if field == "input" else InvalidRequest)
    assert refused.value.field == field
    assert schedules.list(project, _no_filters(), cursor=None, limit=10).items == []


def test_an_unknown_target_is_refused_with_422(
    schedules: ScheduleService, project: Project
) -> None:
    with pytest.raises(UnknownTarget):
        new(schedules, project, schedule="0 3 * * *", target={"kind": "task", "id": "nope"})


def test_a_completed_schedule_can_neither_be_resumed_nor_triggered(
    schedules: ScheduleService, firer: ScheduleFirer, clock: Clock, project: Project
) -> None:
    s = new(schedules, project, run_at=clock.now + timedelta(seconds=10))
    drive(firer, clock, clock.now + timedelta(minutes=1), timedelta(seconds=5))
    with pytest.raises(Conflict):
        schedules.update(project, s.id, {"status": "active"})
    with pytest.raises(Conflict):
        schedules.trigger(project, s.id, idempotency_key="k", run_name=None)


def _no_filters() -> Any:
    from runs.persistence.schedules import ScheduleFilters

    return ScheduleFilters()


# -- racing firers ----------------------------------------------------------------------------


def test_firers_racing_on_the_same_due_schedules_create_one_run_per_occurrence(
    engine: sa.Engine,
    service: RunService,
    schedules: ScheduleService,
    clock: Clock,
    project: Project,
) -> None:
    made = [new(schedules, project, name=f"s{i}", interval_seconds=60) for i in range(40)]
    clock.advance(seconds=61)
    firers = [make_firer(engine, service, clock) for _ in range(4)]
    errors: list[BaseException] = []

    def fire(f: ScheduleFirer) -> None:
        try:
            f.fire_due()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fire, args=(f,)) for f in firers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for s in made:
        assert len(runs_of(engine, project, s.id)) == 1
        assert fired_at(engine, s.id) == [s.next_run_at]


def test_firing_stops_between_passes_when_asked(
    engine: sa.Engine,
    service: RunService,
    schedules: ScheduleService,
    clock: Clock,
    project: Project,
) -> None:
    for i in range(5):
        new(schedules, project, name=f"s{i}", interval_seconds=60)
    clock.advance(seconds=61)
    one_at_a_time = ScheduleFirer(
        engine, runs=service, grace_seconds=GRACE, batch_size=1, max_catchup_runs=10, clock=clock
    )
    passes: list[int] = []
    created = one_at_a_time.fire_due(
        stop=lambda: len(passes) >= 2, on_pass=lambda r: passes.append(len(r.created))
    )
    assert (created, passes) == (2, [1, 1])  # a stopping scheduler does not drain the backlog
