"""How the run commands show runs and events in a terminal: a run's fields, one line an event,
and a live status line while a run is followed."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from runs.cli.tables import fields_table
from runs.client import RunsClient, WaitTimeout
from runs.client.calls import TERMINAL_STATUSES
from runs.schemas.runs import RunEventOut, RunOut

console = Console()
errors = Console(stderr=True)

# What a live status line shows after an event of these types.
_STATUS_AFTER = {"RUN_STARTED": "running", "STEP_STARTED": "running"}


STATUS_STYLES = {
    "pending": "yellow",
    "running": "cyan",
    "waiting": "magenta",
    "completed": "green",
    "failed": "red",
    "cancelled": "bright_black",
}


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def status(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def show_run(item: RunOut) -> None:
    fields: list[tuple[str, Any]] = []
    for key, value in item.model_dump(mode="json").items():
        if value is None or value == []:
            continue
        shown: Any = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        fields.append((key, status(value) if key == "status" else shown))
    console.print(fields_table(fields))


def print_event(event: RunEventOut, *, as_json: bool) -> None:
    if as_json:
        print(event.model_dump_json())
        return
    console.print(event_line(event), soft_wrap=True)


def event_line(event: RunEventOut) -> Text:
    """``15:30:26.739 #3 PROGRESS_REPORTED {"done":1,"total":3}`` (the time in UTC)."""
    payload = json.dumps(event.payload, ensure_ascii=False, separators=(",", ":"))
    if len(payload) > 300:
        payload = payload[:299] + "…"
    line = Text(f"{event.created_at[11:23]} ", style="dim")
    line.append(f"#{event.event_id} ", style="dim")
    line.append(event.event_type, style="bold")
    line.append(f" {payload}")
    return line


def short_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def elapsed(item: RunOut) -> float:
    begun = datetime.fromisoformat(item.created_at.replace("Z", "+00:00"))
    return max(0.0, (datetime.now(UTC) - begun).total_seconds())


class _LiveStatus:
    """The line under the events: a spinner while the run goes on, its status and age."""

    def __init__(self, item: RunOut) -> None:
        self.item = item
        self.status: str = item.status
        self.spinner = Spinner("dots")

    def __rich__(self) -> Group:
        line = Text()
        line.append(f"{self.item.run_id} ", style="bold")
        line.append(f"{self.item.target} ")
        line.append_text(status(self.status))
        line.append(f"  {elapsed(self.item):.1f} s", style="dim")
        if self.status in TERMINAL_STATUSES:
            return Group(line)
        self.spinner.text = line
        return Group(self.spinner)


def follow(
    client: RunsClient, item: RunOut, *, as_json: bool, timeout: float | None, after: int = 0
) -> RunOut:
    """Print the run's events as they come, under a live status line; the ended run."""
    deadline = None if timeout is None else time.monotonic() + timeout
    if as_json:
        for event in client.stream(item.run_id, after=after):
            print_event(event, as_json=True)
            _check(deadline, item.run_id, timeout)
        final = client.wait(item.run_id, timeout=_left(deadline))
        print(final.model_dump_json())
        return final
    status = _LiveStatus(item)
    with Live(status, console=console, refresh_per_second=10, transient=True) as live:
        for event in client.stream(item.run_id, after=after):
            live.console.print(event_line(event), soft_wrap=True)
            status.status = _STATUS_AFTER.get(event.event_type, status.status)
            _check(deadline, item.run_id, timeout)
        final = client.wait(item.run_id, timeout=_left(deadline))
    status.item, status.status = final, final.status
    console.print(status)
    if final.error is not None:
        errors.print(
            f"[red]{final.error.code or 'error'}:[/red] {final.error.message}", highlight=False
        )
    return final


def _check(deadline: float | None, run_id: str, timeout: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise WaitTimeout(run_id, timeout or 0)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.1, deadline - time.monotonic())
