"""JSON log lines, and the run a line is about.

A worker binds the run's fields once it has claimed an attempt (``bind_run_fields``); they stay
bound until the Celery job ends, so every line the job logs, Celery's own line about its
outcome included, carries them. The API binds what a request names. ``JsonFormatter`` writes
one JSON object per line with the bound fields (``extra=`` on a call wins over them).

The API and the workers use it; it imports only the standard library and the domain.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from runs.domain.runs import Run

# What a line about a run carries.
RUN_FIELDS = ("run_id", "project_id", "target", "attempt", "queue")
# Also written when bound or given as ``extra``.
OPTIONAL_FIELDS = ("node_id", "request_id")

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_bound: ContextVar[Mapping[str, Any]] = ContextVar("runs_log_fields", default=_EMPTY)


def run_log_fields(run: Run) -> dict[str, Any]:
    """The fields of a line about ``run`` (a workflow step binds its own attempt after)."""
    return {
        "run_id": run.run_id,
        "project_id": run.project_id,
        "target": run.target,
        "attempt": run.attempt,
        "queue": run.queue,
    }


def bind_run_fields(**fields: Any) -> Token[Mapping[str, Any]]:
    """Add ``fields`` to the ones bound in this context; ``reset_run_fields`` undoes it."""
    return _bound.set({**_bound.get(), **fields})


def set_run_fields(**fields: Any) -> None:
    """Bind exactly ``fields``, dropping any bound before (a job starts)."""
    _bound.set(MappingProxyType(fields))


def reset_run_fields(token: Token[Mapping[str, Any]]) -> None:
    _bound.reset(token)


def clear_run_fields() -> None:
    """Forget every bound field (a Celery job ended: the next one is about another run)."""
    _bound.set(_EMPTY)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC), ``level``, ``logger``, ``process``,
    ``message``, the bound run fields, and ``exc_info``/``stack_info`` when present.

    Usable from a dictConfig file: ``{"()": "runs.observability.json_logs.JsonFormatter"}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update(_bound.get())
        for name in (*RUN_FIELDS, *OPTIONAL_FIELDS):
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
