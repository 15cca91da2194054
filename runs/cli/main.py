"""The ``runs`` command: dev, api, worker, scheduler, flower, db, projects, tokens, definitions,
schedules; and over HTTP: run, get, events, ls, cancel, approve, signal."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from runs.cli import runs_commands
from runs.cli.admin_settings import admin_settings
from runs.cli.schedules import schedules_app
from runs.cli.settings_view import settings_command
from runs.cli.tables import Col, id_table
from runs.domain.errors import RunsError
from runs.observability.logs import configure_logging
from runs.persistence.engine import create_engine
from runs.services.access import AccessService
from runs.services.catalog import DefinitionCatalog
from runs.settings import Settings

app = typer.Typer(help="Durable task and workflow runs on Celery.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
projects_app = typer.Typer(help="Projects.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens (stored hashed; shown once).", no_args_is_help=True)
definitions_app = typer.Typer(
    help="Registered task and workflow definitions.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(projects_app, name="projects")
app.add_typer(tokens_app, name="tokens")
app.add_typer(definitions_app, name="definitions")
app.add_typer(schedules_app, name="schedules")
runs_commands.register(app)
app.command(name="settings")(settings_command)

console = Console()


@app.command()
def dev(
    host: Annotated[str, typer.Option(help="API host")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    workers: Annotated[int, typer.Option(help="worker processes (prefork concurrency)")] = 2,
    data_dir: Annotated[
        Path, typer.Option(help="where SQLite, Redis data and dev.json live")
    ] = Path(".runs"),
    redis_port: Annotated[int, typer.Option(help="port of the bundled Redis")] = 6390,
    flower: Annotated[bool, typer.Option(help="also start Flower (its port is printed)")] = False,
) -> None:
    """Start everything on embedded defaults: SQLite, a bundled Redis, the API and a worker."""
    from runs.cli.dev import run_dev

    settings = Settings()
    if "RUNS_DATABASE_URL" not in os.environ:
        settings = settings.model_copy(
            update={"database_url": f"sqlite:///{(data_dir / 'runs.db').as_posix()}"}
        )
    raise typer.Exit(
        run_dev(
            settings,
            data_dir=data_dir,
            host=host,
            port=port,
            workers=workers,
            redis_port=redis_port,
            flower=flower,
        )
    )


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="default: RUNS_API_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default: RUNS_API_PORT")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="processes serving the one port; default: RUNS_API_WORKERS"),
    ] = None,
) -> None:
    """Serve the HTTP API (uvicorn, with the RUNS_HTTP_* limits), from one or more processes."""
    from runs.api.server import serve

    settings = Settings()
    configure_logging(settings)
    serve(
        settings,
        host=host or settings.api_host,
        port=port if port is not None else settings.api_port,
        workers=workers if workers is not None else settings.api_workers,
    )


@app.command()
def worker(
    queues: Annotated[
        str | None, typer.Option(help="comma-separated; default: every routed queue")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="processes or threads of the pool")] = 2,
    pool: Annotated[str, typer.Option(help="prefork, threads or solo")] = "prefork",
    hostname: Annotated[str | None, typer.Option(help="worker node name")] = None,
    loglevel: Annotated[str | None, typer.Option(help="default: RUNS_LOG_LEVEL")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="serve Prometheus metrics of the pool; default: RUNS_WORKER_METRICS_PORT"
        ),
    ] = None,
) -> None:
    """Start a Celery worker pool for the given queues (runs the definitions in RUNS_DEFINITIONS)."""
    from runs.messaging.routing import Router
    from runs.observability.metrics_server import worker_env

    settings = Settings()
    port = metrics_port if metrics_port is not None else settings.worker_metrics_port
    if port is not None:  # before Celery starts: its processes count in files from the first
        os.environ.update(worker_env(settings, port))
    if queues is None:
        queues = ",".join(Router(settings.route_table, settings.default_queue).queues())
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-P",
        pool,
        "-l",
        (loglevel or settings.log_level).upper(),
        "-E",
    ]
    if hostname:
        argv += ["-n", hostname]
    os.execv(sys.executable, argv)


@app.command()
def scheduler(
    metrics_port: Annotated[
        int | None,
        typer.Option(help="serve Prometheus metrics; default: RUNS_SCHEDULER_METRICS_PORT"),
    ] = None,
) -> None:
    """Fire due schedules until stopped (any number of schedulers may run at once)."""
    from runs.scheduling.scheduler import serve

    settings = Settings()
    if metrics_port is not None:
        settings = settings.model_copy(update={"scheduler_metrics_port": metrics_port})
    configure_logging(settings)
    serve(settings)


@app.command()
def flower(
    port: Annotated[int, typer.Option(help="HTTP port")] = 5555,
    address: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
) -> None:
    """Start Flower on the workers' broker: one task type per target. RUNS_FLOWER_BASIC_AUTH
    ("user:password") turns on basic auth; without it the pages are open to anyone who can
    reach the port, and Flower's HTTP API is off."""
    settings = Settings()
    env = dict(os.environ)
    if settings.flower_basic_auth is not None:
        # Flower's --basic-auth, through its environment: kept out of the process list.
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    elif "FLOWER_BASIC_AUTH" not in env:
        print("runs flower: RUNS_FLOWER_BASIC_AUTH is unset: no authentication", file=sys.stderr)
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower"]
    os.execve(sys.executable, [*argv, f"--address={address}", f"--port={port}"], env)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations to RUNS_DATABASE_URL."""
    from runs.persistence import migrate

    settings = Settings()
    migrate.upgrade(settings.database_url, revision)
    console.print(f"database at revision {revision}")


@db_app.command("current")
def db_current() -> None:
    """Show the database's migration revision."""
    from runs.persistence import migrate

    migrate.current(_admin_settings().database_url)


def _access() -> AccessService:
    return AccessService(create_engine(_admin_settings().database_url, pool_size=1))


def _admin_settings() -> Settings:
    """The settings of a command on an existing database (see ``runs.cli.admin_settings``)."""
    with _errors():
        return admin_settings()


@projects_app.command("create")
def projects_create(slug: str, name: Annotated[str | None, typer.Option()] = None) -> None:
    """Create a project."""
    access = _access()
    with _errors():
        project = access.create_project(slug, name)
    console.print(f"project {project.slug} id {project.id}")


@projects_app.command("list")
def projects_list() -> None:
    """List projects."""
    access = _access()
    projects = access.list_projects()
    rows = [(p.id, p.slug, p.name, _when(p.created_at)) for p in projects]
    console.print(id_table(console, "id", [Col("slug", keep=2), "name", "created"], rows))


@tokens_app.command("create")
def tokens_create(project: str, name: Annotated[str, typer.Option()] = "default") -> None:
    """Create a token for PROJECT (id or slug); the secret is printed once."""
    access = _access()
    with _errors():
        token, secret = access.create_token(project, name)
    console.print(f"token id {token.id}", highlight=False)
    print(secret)


@tokens_app.command("list")
def tokens_list(project: str) -> None:
    """List the tokens of PROJECT (never their secrets)."""
    access = _access()
    with _errors():
        tokens = access.list_tokens(project)
    rows = [
        (t.id, t.name, _when(t.created_at), _when(t.revoked_at) if t.revoked_at else "")
        for t in tokens
    ]
    console.print(id_table(console, "id", ["name", "created", Col("revoked", keep=1)], rows))


@tokens_app.command("revoke")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token by id."""
    access = _access()
    with _errors():
        access.revoke_token(token_id)
    console.print(f"token {token_id} revoked")


@definitions_app.command("list")
def definitions_list() -> None:
    """List the definitions workers have registered."""
    catalog = DefinitionCatalog(
        create_engine(_admin_settings().database_url, pool_size=1), cache_seconds=0
    )
    items = catalog.list()
    rows = [(i.target, i.name or "", i.description or "") for i in items]
    console.print(id_table(console, "target", ["name", Col("description", keep=1)], rows))


def _when(moment: datetime) -> str:
    """A time in a table: to the minute, in UTC, saying so."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except RunsError as exc:
        console.print(f"[red]error:[/red] {exc.detail}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc


def main() -> None:
    app()


if __name__ == "__main__":
    main()
