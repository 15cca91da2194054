"""The commands that work on runs over HTTP, through the SDK: ``runs run``, ``get``,
``events``, ``ls``, ``cancel``, ``approve`` and ``signal``.

The API URL, token and project come from the flags, else RUNS_API_URL / RUNS_API_TOKEN /
RUNS_PROJECT, else the ``.runs/dev.json`` of ``runs dev`` in this folder or a parent.
Exit codes: 0 completed (or done), 1 failed, 2 a usage or API error, 130 cancelled (or
interrupted), 124 ``--wait``/``--timeout`` ran out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from runs.cli import run_views as views
from runs.cli.tables import Col, id_table
from runs.client import RetryPolicy, RunsClient, RunsClientError, TransportError, WaitTimeout
from runs.client.config import resolve_config
from runs.schemas.runs import RunOut

EXIT_CODES = {"completed": 0, "failed": 1, "cancelled": 130}
USAGE_OR_API_ERROR = 2
TIMED_OUT = 124
INTERRUPTED = 130

console = Console()
errors = Console(stderr=True)

ApiUrl = Annotated[
    str | None, typer.Option("--api-url", help="default: RUNS_API_URL, else .runs/dev.json")
]
Token = Annotated[
    str | None, typer.Option("--token", help="default: RUNS_API_TOKEN, else .runs/dev.json")
]
Project = Annotated[
    str | None,
    typer.Option(
        "--project",
        help="id or slug; default: RUNS_PROJECT, else .runs/dev.json, else the token's",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON (ids never cut)")]
RunArg = Annotated[str, typer.Argument(help="the run's id")]


def register(app: typer.Typer) -> None:
    for command in (run, get, events, ls, cancel, approve, signal):
        app.command(name=command.__name__, rich_help_panel="Runs, over the HTTP API")(command)


# A command gives up on a server that does not answer within about a second: a person waits.
RETRY = RetryPolicy(max_retries=3, initial_delay=0.15, max_delay=0.6)


@contextmanager
def _client(api_url: str | None, token: str | None, project: str | None) -> Iterator[RunsClient]:
    """A client from the flags, the environment or dev.json; errors become one line and
    exit code 2, Ctrl-C exit code 130."""
    url = api_url
    try:
        config = resolve_config(api_url, token, project, dev_info=True)
        url = config.api_url
        with RunsClient(
            api_url=config.api_url,
            auth_token=config.auth_token,
            project_reference=config.project_reference,
            retry=RETRY,
        ) as client:
            yield client
    except WaitTimeout as exc:
        errors.print(f"[yellow]timed out:[/yellow] {exc}", highlight=False)
        raise typer.Exit(TIMED_OUT) from exc
    except TransportError as exc:
        if isinstance(exc.__cause__, httpx.ConnectError):
            message = (
                f"nothing answers at {url}: start the server there (`runs dev` in the "
                "project folder, or `runs api`), or point --api-url / RUNS_API_URL at one"
            )
        else:
            message = str(exc)
        errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(USAGE_OR_API_ERROR) from exc
    except RunsClientError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(USAGE_OR_API_ERROR) from exc
    except KeyboardInterrupt:
        raise typer.Exit(INTERRUPTED) from None


def _json_value(value: str | None, option: str) -> Any:
    """A JSON option: the JSON text itself, or ``@path`` of a file holding it."""
    if value is None:
        return None
    try:
        text = Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value
        return json.loads(text)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"not JSON or a readable @file: {exc}", param_hint=option) from exc


def _run_options(
    config: str | None, input: str | None, public_id: str | None, name: str | None
) -> dict[str, Any]:
    """What ``runs run`` asks the SDK for, from its options."""
    config_value = _json_value(config, "--config")
    if config_value is not None and not isinstance(config_value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--config")
    options = {
        "public_id": public_id,
        "name": name,
        "input": _json_value(input, "--input"),
        "config": config_value,
    }
    return {k: v for k, v in options.items() if v is not None}


def _show(run: RunOut, *, as_json: bool) -> None:
    if as_json:
        views.print_json(run.model_dump(mode="json"))
    else:
        views.show_run(run)


def _ended(run: RunOut) -> None:
    raise typer.Exit(EXIT_CODES.get(run.status, 0))


# -- commands --------------------------------------------------------------------------------


def run(
    target: Annotated[str, typer.Argument(help="task:<id> or workflow:<id>")],
    config: Annotated[
        str | None, typer.Option("--config", help="JSON object, or @file holding one")
    ] = None,
    input: Annotated[str | None, typer.Option("--input", help="JSON, or @file")] = None,
    public_id: Annotated[
        str | None, typer.Option("--public-id", help="the run's id (a repeat is not a new run)")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="a display name")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait for the end; exit by status")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="show events live until the end")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="seconds to wait or follow (exit 124)")
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="print the run's id alone (also when piped)"),
    ] = False,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
    token: Token = None,
    project: Project = None,
) -> None:
    """Start a run and print its id; with --wait or --follow, exit with its outcome.

    Piped or with -q, the id is printed alone: ``R=$(runs run task:sleep); runs cancel $R``."""
    if wait and follow:
        raise typer.BadParameter("choose one of --wait and --follow", param_hint="--wait")
    options = _run_options(config, input, public_id, name)
    with _client(api_url, token, project) as client:
        if target.startswith("workflow:"):
            created = client.create_workflow_run(target, **options)
        else:
            created = client.create_task_run(target, **options)
        started = created.run
        if follow:
            final = views.follow(client, started, as_json=as_json, timeout=timeout)
        elif wait:
            final = client.wait(started.run_id, timeout=timeout)
            _show(final, as_json=as_json)
        else:
            if as_json:
                views.print_json(created.model_dump(mode="json"))
            elif quiet or not console.is_terminal:
                print(started.run_id)
            else:
                note = " (duplicate: it existed already)" if created.duplicate else ""
                console.print(f"{started.run_id} {started.status}{note}", highlight=False)
            return
    _ended(final)


def get(
    run_id: RunArg,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
    token: Token = None,
    project: Project = None,
) -> None:
    """Show a run."""
    with _client(api_url, token, project) as client:
        found = client.get(run_id)
    _show(found, as_json=as_json)


def events(
    run_id: RunArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="go on live until the run ends")
    ] = False,
    after: Annotated[int, typer.Option("--after", help="start after this event id")] = 0,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="seconds to follow (exit 124)")
    ] = None,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
    token: Token = None,
    project: Project = None,
) -> None:
    """Print a run's events; with --follow, live until it ends, exiting by its outcome."""
    with _client(api_url, token, project) as client:
        if follow:
            final = views.follow(
                client, client.get(run_id), as_json=as_json, timeout=timeout, after=after
            )
        else:
            while True:
                page = client.events(run_id, after=after, limit=100)
                for event in page.data:
                    views.print_event(event, as_json=as_json)
                if page.page_info.next is None:
                    return
                after = int(page.page_info.next)
    _ended(final)


def ls(
    status: Annotated[
        list[str] | None, typer.Option("--status", help="repeat or comma-separate")
    ] = None,
    target: Annotated[list[str] | None, typer.Option("--target", help="e.g. task:echo")] = None,
    kind: Annotated[list[str] | None, typer.Option("--kind", help="task or workflow")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="how many runs to show")] = 20,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
    token: Token = None,
    project: Project = None,
) -> None:
    """List the project's runs, newest first."""
    filters: dict[str, Any] = {"limit": min(limit, 100)}
    for key, values in (("status", status), ("target", target), ("kind", kind)):
        if values:
            filters[key] = ",".join(values)
    with _client(api_url, token, project) as client:
        found: list[RunOut] = []
        for item in client.iter_runs(**filters):
            found.append(item)
            if len(found) == limit:
                break
    if as_json:
        views.print_json([r.model_dump(mode="json") for r in found])
        return
    rows = [
        (
            item.run_id,
            item.target or "",
            views.status(item.status),
            views.short_duration(views.elapsed(item)),
            f"{item.duration_ms / 1000:.2f} s" if item.duration_ms is not None else "",
        )
        for item in found
    ]
    columns: list[Col | str] = [
        Col("target", keep=2, least=9),
        Col("status", keep=3, least=9),
        "age",
        "took",
    ]
    console.print(id_table(console, "run", columns, rows))


def cancel(
    run_id: RunArg,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
    token: Token = None,
    project: Project = None,
) -> None:
    """Cancel a run (a run that has ended stays as it is)."""
    with _client(api_url, token, project) as client:
        answer = client.cancel(run_id)
    if as_json:
        views.print_json(answer.model_dump(mode="json"))
    elif answer.cancelled:
        console.print(f"{run_id} cancel requested", highlight=False)
    else:
        console.print(f"{run_id} had ended already ({answer.run.status})", highlight=False)


def approve(
    run_id: RunArg,
    node: Annotated[str, typer.Argument(help="the approval's node id")],
    reject: Annotated[bool, typer.Option("--reject", help="reject instead")] = False,
    comment: Annotated[str | None, typer.Option("--comment")] = None,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
    token: Token = None,
    project: Project = None,
) -> None:
    """Approve (or --reject) a workflow run's wait_for_approval."""
    with _client(api_url, token, project) as client:
        answer = client.approve(run_id, node, approved=not reject, comment=comment)
    if as_json:
        views.print_json(answer.model_dump(mode="json"))
    else:
        verb = "rejected" if reject else "approved"
        console.print(f"{run_id} {node} {verb}; the run is {answer.run.status}", highlight=False)


def signal(
    run_id: RunArg,
    event: Annotated[str, typer.Argument(help="the event a wait_for_event waits for")],
    payload: Annotated[str | None, typer.Option("--payload", help="JSON, or @file")] = None,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
    token: Token = None,
    project: Project = None,
) -> None:
    """Deliver an event to a workflow run's wait_for_event steps."""
    value = _json_value(payload, "--payload")
    with _client(api_url, token, project) as client:
        answer = client.signal(run_id, event, value)
    if as_json:
        views.print_json(answer.model_dump(mode="json"))
    else:
        resumed = ", ".join(answer.resumed) or "nothing (no step waits for it)"
        console.print(f"{run_id} {event}: resumed {resumed}", highlight=False)


# -- showing runs and events -----------------------------------------------------------------
