"""Definitions: ``@task("echo")`` registration, schedules written beside them
(``schedule(...)``), and discovery from modules named in settings."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from runs.domain.definitions import Definition
from runs.domain.runs import DEFINITION_ID_PATTERN
from runs.domain.schedules import SourceSchedule
from workers.definitions.dsl import Node, Retry, WorkflowDefinition, compile_workflow
from workers.definitions.errors import DefinitionError
from workers.definitions.specs import DEFAULT_ENV_ALLOW, Command

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class TaskDefinition:
    id: str
    fn: Callable[..., Any]
    name: str | None = None
    description: str | None = None
    input_model: type[BaseModel] | None = None
    output_model: type[BaseModel] | None = None
    # Defaults for runs that do not set their own timeout_seconds / backoff_limit.
    timeout_seconds: float | None = None
    backoff_limit: int | None = None
    # Set for process-backed tasks: ``fn`` is then never called.
    command: Command | None = None

    @property
    def target(self) -> str:
        return f"task:{self.id}"

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def catalog_entry(self) -> Definition:
        return Definition(
            target=self.target,
            kind="task",
            name=self.name,
            description=self.description,
            input_schema=self.input_model.model_json_schema() if self.input_model else None,
            output_schema=self.output_model.model_json_schema() if self.output_model else None,
        )


class Registry:
    def __init__(self) -> None:
        self._tasks: dict[str, TaskDefinition] = {}
        self._workflows: dict[str, WorkflowDefinition] = {}
        self._schedules: dict[str, SourceSchedule] = {}

    def task(
        self,
        id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        input_model: type[BaseModel] | None = None,
        output_model: type[BaseModel] | None = None,
        timeout_seconds: float | None = None,
        backoff_limit: int | None = None,
    ) -> Callable[[F], F]:
        """Register ``fn(ctx)`` (sync or async) as the task ``task:<id>``."""

        def decorate(fn: F) -> F:
            self.add(
                TaskDefinition(
                    id=id,
                    fn=fn,
                    name=name,
                    description=description or inspect.getdoc(fn),
                    input_model=input_model,
                    output_model=output_model,
                    timeout_seconds=timeout_seconds,
                    backoff_limit=backoff_limit,
                )
            )
            return fn

        return decorate

    def command(
        self,
        id: str,
        argv: Sequence[str] | Callable[[dict[str, Any]], Sequence[str]],
        *,
        env_allow: Sequence[str] = DEFAULT_ENV_ALLOW,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        name: str | None = None,
        description: str | None = None,
        timeout_seconds: float | None = None,
        backoff_limit: int | None = None,
    ) -> TaskDefinition:
        """Register ``task:<id>`` as a command run in a subprocess (see ``workers.execution.commands``).

        ``argv`` is a list, or a function of the run's config returning one; ``env_allow``
        names the worker's environment variables the command may see; ``env`` adds fixed ones.
        """
        if not callable(argv) and not argv:
            raise DefinitionError(f"command task {id!r} needs a non-empty argv")
        definition = TaskDefinition(
            id=id,
            fn=_command_placeholder,
            name=name,
            description=description,
            timeout_seconds=timeout_seconds,
            backoff_limit=backoff_limit,
            command=Command(argv=argv, env_allow=tuple(env_allow), env=dict(env or {}), cwd=cwd),
        )
        self.add(definition)
        return definition

    def add(self, definition: TaskDefinition) -> None:
        if not DEFINITION_ID_PATTERN.fullmatch(definition.id):
            raise DefinitionError(
                f"task id {definition.id!r} must be letters, digits, '_', '.', '/' or '-'"
            )
        existing = self._tasks.get(definition.id)
        if existing is not None and (
            existing.fn is not definition.fn or existing.command != definition.command
        ):
            raise DefinitionError(
                f"task {definition.id!r} is defined twice: in {_where(existing.fn)} and "
                f"{_where(definition.fn)}"
            )
        self._tasks[definition.id] = definition

    def workflow(
        self,
        id: str,
        steps: Sequence[Node],
        *,
        input_model: type[BaseModel] | None = None,
        output_model: type[BaseModel] | None = None,
        timeout: float | None = None,
        retry: Retry | None = None,
        output: Callable[[Any], Any] | None = None,
        description: str | None = None,
    ) -> WorkflowDefinition:
        """Register ``workflow:<id>``. Tasks its steps name must be registered first."""
        definition = compile_workflow(
            id,
            steps,
            known_tasks=lambda task_id: task_id in self._tasks,
            input_model=input_model,
            output_model=output_model,
            timeout=timeout,
            retry=retry,
            output=output,
            description=description,
        )
        if id in self._workflows:
            raise DefinitionError(f"workflow {id!r} is defined twice")
        self._workflows[id] = definition
        return definition

    def schedule(
        self,
        id: str,
        *,
        target: str,
        cron: str | None = None,
        interval_seconds: int | None = None,
        timezone: str = "UTC",
        input: Any = None,
        config: dict[str, Any] | None = None,
        name: str | None = None,
        timeout_seconds: int | None = None,
        backoff_limit: int | None = None,
        concurrency_policy: str = "Allow",
        max_runs: int | None = None,
        catchup: str = "latest",
        catchup_window_seconds: int | None = None,
    ) -> SourceSchedule:
        """Declare a recurring schedule in code (``cron`` or ``interval_seconds``), for example
        ``schedule("nightly-sync", cron="0 3 * * *", timezone="Europe/Berlin",
        target="task:sync-data")``. Workers sync it into the project named by
        RUNS_SOURCE_SCHEDULES_PROJECT when they start; the server checks its fields then."""
        kind, _, definition_id = target.partition(":")
        fields: dict[str, Any] = {
            "name": name or id,
            "target": {"kind": kind, "id": definition_id},
            "schedule": cron,
            "interval_seconds": interval_seconds,
            "timezone": timezone,
            "input": input,
            "config": config,
            "timeout_seconds": timeout_seconds,
            "backoff_limit": backoff_limit,
            "concurrency_policy": concurrency_policy,
            "max_runs": max_runs,
            "catchup": catchup,
            "catchup_window_seconds": catchup_window_seconds,
        }
        digest = hashlib.sha256(
            json.dumps(fields, sort_keys=True, default=str).encode()
        ).hexdigest()
        caller = inspect.stack()[1].filename
        declared = SourceSchedule(id=id, fields=fields, path=_relative(caller), hash=digest)
        existing = self._schedules.get(id)
        if existing is not None and existing != declared:
            raise DefinitionError(f"schedule {id!r} is declared twice")
        self._schedules[id] = declared
        return declared

    def schedules(self) -> list[SourceSchedule]:
        return list(self._schedules.values())

    def resolve(self, target: str) -> TaskDefinition:
        found = self.find(target)
        if found is None:
            raise LookupError(f"no definition for target {target!r} in this worker")
        return found

    def find(self, target: str) -> TaskDefinition | None:
        """The task definition of ``target``, or None when this worker has none."""
        kind, _, definition_id = target.partition(":")
        return self._tasks.get(definition_id) if kind == "task" else None

    def resolve_workflow(self, target: str) -> WorkflowDefinition:
        kind, _, definition_id = target.partition(":")
        found = self._workflows.get(definition_id) if kind == "workflow" else None
        if found is None:
            raise LookupError(f"no definition for target {target!r} in this worker")
        return found

    def targets(self) -> list[str]:
        return sorted(
            [d.target for d in self._tasks.values()] + [w.target for w in self._workflows.values()]
        )

    def catalog_entries(self) -> list[Definition]:
        workflows = [
            Definition(
                target=w.target,
                kind="workflow",
                name=w.id,
                description=w.description,
                input_schema=w.input_model.model_json_schema() if w.input_model else None,
                output_schema=w.output_model.model_json_schema() if w.output_model else None,
            )
            for w in self._workflows.values()
        ]
        return [d.catalog_entry() for d in self._tasks.values()] + workflows

    def load(self, modules: Iterable[str]) -> None:
        """Import the modules whose import registers definitions into this registry."""
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise DefinitionError(
                    f"cannot import definitions module {module!r} (RUNS_DEFINITIONS): {exc}"
                ) from exc


def _command_placeholder(ctx: Any) -> None:
    raise RuntimeError("a command task runs through workers.execution.commands, not as a function")


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _where(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


registry = Registry()
task = registry.task
command = registry.command
workflow = registry.workflow
schedule = registry.schedule
