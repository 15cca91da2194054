"""The Celery app of the worker pools: one Celery task per target, named by the target.

``create_celery(settings)`` builds it; ``celery -A workers.celery_app`` (worker, flower,
inspect) finds the module-level ``app``, created on first access from the environment.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from celery import Celery, signals

from runs.domain.errors import RunsError
from runs.domain.runs import RunRef
from runs.messaging.celery_config import celery_config
from runs.observability.json_logs import clear_run_fields, set_run_fields
from runs.observability.logs import configure_logging
from runs.persistence.engine import create_engine
from runs.scheduling.code_schedules import sync_source_schedules
from runs.services.catalog import DefinitionCatalog
from runs.settings import Settings
from runs.wiring import wire
from workers.definitions.registry import Registry
from workers.definitions.registry import registry as default_registry
from workers.drain import Drain, listen_for_drain
from workers.execution.guard import mark_pool_process
from workers.execution.runtime import get_runtime
from workers.execution.task_groups import GroupResult, execute, execute_group
from workers.flower_events import CONSUMER, EVENTS, INTERVAL_SETTING, RESULT_REPR_LIMIT, JobRequest
from workers.metrics import install_metrics
from workers.sweeper import Sweeper
from workers.workflows.engine import WorkflowEngine
from workers.workflows.steps import StepRunner

log = logging.getLogger(__name__)


def create_celery(settings: Settings, registry: Registry | None = None) -> Celery:
    registry = registry if registry is not None else default_registry
    registry.load(settings.definitions)
    app = Celery("runs", events=EVENTS)
    app.conf.update(celery_config(settings))
    # Task events in batches (workers/flower_events.py).
    app.conf.worker_consumer = CONSUMER
    app.conf[INTERVAL_SETTING] = settings.worker_event_flush_seconds
    for target in registry.targets():
        _register_job(app, settings, registry, target)

    drain = Drain(settings.worker_drain_seconds)

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            register_definitions(settings, registry)
            drain.attach(sender)

    signals.worker_init.connect(on_worker_init, weak=False)
    sweeper = Sweeper(settings, registry)

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            sweeper.start()

    def on_worker_shutdown(**_: Any) -> None:
        sweeper.stop()

    def on_worker_process_init(**_: Any) -> None:
        mark_pool_process()
        listen_for_drain()

    signals.worker_process_init.connect(on_worker_process_init, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)
    signals.worker_shutdown.connect(on_worker_shutdown, weak=False)
    signals.worker_shutting_down.connect(drain.begin, weak=False)
    install_metrics(app, settings)
    if settings.logging_config is not None or settings.log_format == "json":

        def on_setup_logging(**_: Any) -> None:
            configure_logging(settings)

        # celeryd_init comes before the worker's first lines and warnings; setup_logging
        # stands for Celery's own logging setup (also in each pool process).
        signals.celeryd_init.connect(on_setup_logging, weak=False)
        signals.setup_logging.connect(on_setup_logging, weak=False)
    # A job binds the fields of its run for its log lines (runs/observability/json_logs.py); they hold
    # until Celery has logged the job's outcome, then the next job starts without them.
    signals.task_postrun.connect(_forget_run_fields, weak=False)
    return app


def _forget_run_fields(**_: Any) -> None:
    clear_run_fields()


def _register_job(app: Celery, settings: Settings, registry: Registry, target: str) -> None:
    # A job's arguments name its run by project and id (run ids are unique per project); a
    # group's job names its runs in ``group`` (runs.messaging.dispatch.dispatch_group).
    workflow = target.startswith("workflow:")

    def job(
        project_id: str = "",
        run_id: str = "",
        node_id: str | None = None,
        group: list[list[Any]] | None = None,
    ) -> str | GroupResult:
        runtime = get_runtime(settings, registry)
        if group is not None:
            jobs = [(RunRef(p, r), int(a)) for p, r, a in group]
            if workflow:
                engine = WorkflowEngine(runtime)
                return [(ref.run_id, attempt, engine.advance(ref)) for ref, attempt in jobs]
            return execute_group(runtime, jobs)
        set_run_fields(run_id=run_id, project_id=project_id, target=target)
        ref = RunRef(project_id, run_id)
        if not workflow:
            return execute(runtime, ref)
        engine = WorkflowEngine(runtime)
        if node_id is None:
            return engine.advance(ref)
        return StepRunner(runtime, engine).run(ref, node_id)

    job.__name__ = job.__qualname__ = re.sub(r"\W", "_", target)
    # A group's result lists each run's outcome: Flower's events are made from all of it.
    app.task(
        name=target,
        typing=False,
        ignore_result=True,
        Request=JobRequest,
        resultrepr_maxsize=RESULT_REPR_LIMIT,
    )(job)


def register_definitions(settings: Settings, registry: Registry) -> None:
    """Publish this worker's definitions to the catalogue the API checks targets against, and
    sync the schedules written beside them (``RUNS_SOURCE_SCHEDULES_PROJECT``)."""
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        DefinitionCatalog(engine, cache_seconds=0).register(registry.catalog_entries())
        log.info("registered %d definitions: %s", len(registry.targets()), registry.targets())
        if settings.source_schedules_project is not None:
            _sync_schedules(settings, registry)
        elif registry.schedules():
            log.warning(
                "%d schedules are written in code but not synced: set "
                "RUNS_SOURCE_SCHEDULES_PROJECT to the project they belong to",
                len(registry.schedules()),
            )
    finally:
        engine.dispose()


def _sync_schedules(settings: Settings, registry: Registry) -> None:
    reference = settings.source_schedules_project
    assert reference is not None
    wired = wire(settings, pool_size=1, auth_cache_seconds=0)
    try:
        project = wired.access.find_project(reference)
        sync_source_schedules(wired.schedules, project, registry.schedules())
    except RunsError as exc:
        log.error("source schedules not synced into project %r: %s", reference, exc.detail)
    finally:
        wired.close()


def __getattr__(name: str) -> Celery:
    if name in ("app", "celery"):
        created = create_celery(Settings())
        globals()["app"] = globals()["celery"] = created
        return created
    raise AttributeError(name)
