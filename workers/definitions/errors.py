"""Every error the worker side raises on purpose, under one base class, ``WorkerError``.

A task raises ``TaskFailed`` (or ``NonRetryableError``) to fail its attempt with a code of its
own, and ``ctx.raise_if_cancelled()`` raises ``RunCancelled``; the worker raises
``RunInterrupted`` inside a task it is stopping; a definition that cannot be registered raises
``DefinitionError`` when the worker starts. ``WorkerError`` itself derives from
``BaseException`` so that ``RunInterrupted`` can be one (a task's ``except Exception`` must not
swallow it); every other error here is an ``Exception`` as well.
"""

from __future__ import annotations

from typing import Any

from runs.domain.runs import ErrorCode


class WorkerError(BaseException):
    """Base of the worker side's errors (``except WorkerError`` catches each of them)."""


class DefinitionError(WorkerError, Exception):
    """A definition is invalid or clashes with another: fix it before starting workers."""


class WorkflowDefinitionError(DefinitionError):
    """A workflow definition is invalid: the message names the workflow and the node."""


class TaskFailed(WorkerError, Exception):
    """Raise from a task to fail this attempt with a chosen ``code`` and JSON ``detail``.

    The run is retried while it has attempts left (``backoff_limit``)."""

    retryable = True

    def __init__(
        self, message: str, *, code: str = ErrorCode.TASK_FAILED, detail: Any = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


class NonRetryableError(TaskFailed):
    """Raise from a task to fail its run at once, whatever attempts it has left."""

    retryable = False


class RunCancelled(WorkerError, Exception):
    """Raised by ``ctx.raise_if_cancelled()`` once the run has been cancelled: let it go."""


class OutputError(WorkerError, Exception):
    """A task returned what cannot be its run's output (not JSON, or not its output model)."""


class RunInterrupted(WorkerError):
    """Raised inside a task the worker is stopping (a cancel, a timeout, a drain). Only a
    ``BaseException``, so that a task's ``except Exception`` does not swallow it."""
