"""``runs schedules``: create, list, get, pause, resume, trigger and delete a project's
schedules, on the database of RUNS_DATABASE_URL (like ``runs projects`` and ``runs tokens``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from runs.cli.admin_settings import admin_settings
from runs.cli.tables import Col, fields_table, id_table
from runs.domain.errors import InvalidRequest, RunsError
from runs.domain.schedules import Schedule
from runs.persistence.schedules import ScheduleFilters
from runs.schemas.schedules import ScheduleOut, parse_instant
from runs.settings import Settings

if TYPE_CHECKING:
    from runs.wiring import Wired

schedules_app = typer.Typer(help="Schedules that create runs later.", no_args_is_help=True)
console = Console()

JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]
ProjectArg = Annotated[str, typer.Argument(help="the project's id or slug")]
ScheduleArg = Annotated[str, typer.Argument(help="the schedule's id")]


@contextmanager
def _services() -> Iterator[tuple[Settings, Wired]]:
    from runs.wiring import wire  # the broker and Redis clients: only when a command runs

    try:
        settings = admin_settings()
    except RunsError as exc:
        console.print(f"[red]error:[/red] {exc.detail}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    wired = wire(settings, pool_size=1, auth_cache_seconds=0)
    try:
        yield settings, wired
    except RunsError as exc:
        console.print(f"[red]error:[/red] {exc.detail}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    finally:
        wired.close()


def _show(settings: Settings, schedule: Schedule, as_json: bool) -> None:
    out = ScheduleOut.from_schedule(schedule, default_timeout=settings.max_timeout_seconds)
    if as_json:
        print(out.model_dump_json(indent=2))
        return
    fields = [
        (name, value if isinstance(value, str) else "" if value is None else json.dumps(value))
        for name, value in out.model_dump().items()
    ]
    console.print(fields_table(fields))


def _json_option(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"--{name} is not JSON: {exc}", field=name) from exc


@schedules_app.command("create")
def create(
    project: ProjectArg,
    name: Annotated[str, typer.Option(help="a name people recognise")],
    target: Annotated[str, typer.Option(help="task:<id> or workflow:<id>")],
    cron: Annotated[str | None, typer.Option(help="five-field cron expression")] = None,
    interval: Annotated[int | None, typer.Option(help="every N seconds")] = None,
    run_at: Annotated[str | None, typer.Option(help="once, ISO-8601 with an offset")] = None,
    timezone: Annotated[str, typer.Option(help="IANA name the cron is read in")] = "UTC",
    input: Annotated[str | None, typer.Option(help="JSON input of each run")] = None,
    config: Annotated[str | None, typer.Option(help="JSON config of each run")] = None,
    concurrency_policy: Annotated[str, typer.Option(help="Allow, Forbid or Replace")] = "Allow",
    max_runs: Annotated[int | None, typer.Option(help="lifetime cap of runs")] = None,
    catchup: Annotated[str, typer.Option(help="skip, latest or all")] = "latest",
    catchup_window: Annotated[int | None, typer.Option(help="seconds")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a schedule in PROJECT."""
    kind, _, definition_id = target.partition(":")
    with _services() as (settings, wired):
        fields: dict[str, Any] = {
            "name": name,
            "target": {"kind": kind, "id": definition_id},
            "schedule": cron,
            "interval_seconds": interval,
            "run_at": _run_at(run_at),
            "timezone": timezone,
            "input": _json_option(input, "input"),
            "config": _json_option(config, "config"),
            "concurrency_policy": concurrency_policy,
            "max_runs": max_runs,
            "catchup": catchup,
            "catchup_window_seconds": catchup_window,
        }
        owner = wired.access.find_project(project)
        _show(settings, wired.schedules.create(owner, fields), as_json)


@schedules_app.command("list")
def list_(
    project: ProjectArg,
    status: Annotated[str | None, typer.Option(help="active, paused or completed")] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 100,
    as_json: JsonOption = False,
) -> None:
    """List PROJECT's schedules, newest first."""
    with _services() as (settings, wired):
        owner = wired.access.find_project(project)
        filters = ScheduleFilters(statuses=(status,) if status else ())
        page = wired.schedules.list(owner, filters, cursor=None, limit=limit)
        outs = [
            ScheduleOut.from_schedule(s, default_timeout=settings.max_timeout_seconds)
            for s in page.items
        ]
        if as_json:
            print(json.dumps([o.model_dump() for o in outs], indent=2))
            return
        rows = [
            (
                o.id,
                o.name,
                o.status,
                f"{o.target.kind}:{o.target.id}",
                _timing(o),
                _next_run(o.next_run_at),
                str(o.run_count),
            )
            for o in outs
        ]
        columns: list[Col | str] = [
            Col("name", keep=3),
            Col("status", keep=4, least=8),
            Col("target", keep=2),
            Col("when", keep=1),
            Col("next run (UTC)", keep=1, least=16),
            "runs",
        ]
        console.print(id_table(console, "id", columns, rows))


def _timing(schedule: ScheduleOut) -> str:
    """When a schedule fires: its cron and time zone, its interval, or its one time."""
    if schedule.schedule:
        return f"{schedule.schedule} ({schedule.timezone})"
    if schedule.interval_seconds:
        return f"every {schedule.interval_seconds} s"
    return schedule.run_at or ""


def _next_run(moment: str | None) -> str:
    return (
        datetime.fromisoformat(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M") if moment else ""
    )


@schedules_app.command("get")
def get(project: ProjectArg, schedule_id: ScheduleArg, as_json: JsonOption = False) -> None:
    """Show one schedule."""
    with _services() as (settings, wired):
        owner = wired.access.find_project(project)
        _show(settings, wired.schedules.get(owner, schedule_id), as_json)


@schedules_app.command("pause")
def pause(project: ProjectArg, schedule_id: ScheduleArg, as_json: JsonOption = False) -> None:
    """Stop a schedule's occurrences until it is resumed."""
    _set_status(project, schedule_id, "paused", as_json)


@schedules_app.command("resume")
def resume(project: ProjectArg, schedule_id: ScheduleArg, as_json: JsonOption = False) -> None:
    """Resume a paused schedule (what fell due meanwhile follows its catchup)."""
    _set_status(project, schedule_id, "active", as_json)


def _set_status(project: str, schedule_id: str, status: str, as_json: bool) -> None:
    with _services() as (settings, wired):
        owner = wired.access.find_project(project)
        _show(settings, wired.schedules.update(owner, schedule_id, {"status": status}), as_json)


@schedules_app.command("trigger")
def trigger(
    project: ProjectArg,
    schedule_id: ScheduleArg,
    idempotency_key: Annotated[
        str | None, typer.Option(help="the same key returns the same run")
    ] = None,
    run_name: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the schedule's target now; prints the run id."""
    key = idempotency_key or f"schedule-cli:{uuid.uuid4()}"
    with _services() as (_, wired):
        owner = wired.access.find_project(project)
        run = wired.schedules.trigger(owner, schedule_id, idempotency_key=key, run_name=run_name)
    if as_json:
        out = {"run_id": run.run_id, "run_execution_id": run.run_id, "schedule_id": schedule_id}
        print(json.dumps(out))
    else:
        print(run.run_id)


@schedules_app.command("delete")
def delete(project: ProjectArg, schedule_id: ScheduleArg) -> None:
    """Delete a schedule (the runs it created stay)."""
    with _services() as (_, wired):
        owner = wired.access.find_project(project)
        wired.schedules.delete(owner, schedule_id)
    console.print(f"schedule {schedule_id} deleted", highlight=False)


def _run_at(value: str | None) -> Any:
    return None if value is None else parse_instant(value)
