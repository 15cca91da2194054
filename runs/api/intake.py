"""Creates that arrive together are accepted together (group commit).

A create that finds no batch in flight starts one at once, alone; the creates that arrive
while a batch is committed and sent wait, and go together as the next one: one thread hop,
one INSERT and one commit for all of them (``RunService.create_many``). Nothing waits on
purpose, so a lone create is as fast as before, and under load the batches grow by
themselves. Each create still gets its own answer: its run, or its own error.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from runs.domain.projects import Project
from runs.domain.runs import Run, RunRequest

Accepted = tuple[Run, bool]
CreateMany = Callable[[Sequence[tuple[Project, RunRequest]]], list[Accepted | Exception]]
Blocking = Callable[..., Awaitable[Any]]

MAX_BATCH = 256


class CreateIntake:
    def __init__(self, create_many: CreateMany, blocking: Blocking) -> None:
        self._create_many = create_many
        self._blocking = blocking
        self._waiting: list[tuple[Project, RunRequest, asyncio.Future[Accepted]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def create(self, project: Project, request: RunRequest) -> Accepted:
        """Accept one run, with whatever else arrives meanwhile. Returns (run, duplicate)."""
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._waiting.append((project, request, future))
        if self._draining is None:
            # In a context of its own: a batch's log lines carry no one request's fields.
            self._draining = asyncio.create_task(self._drain(), context=contextvars.Context())
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[Project, RunRequest, asyncio.Future[Accepted]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                try:
                    results = await self._blocking(
                        self._create_many, [(project, request) for project, request, _ in batch]
                    )
                except Exception as error:  # storage away: every create of the batch fails
                    results = [error] * len(batch)
                for (_, _, future), result in zip(batch, results, strict=True):
                    if future.done():  # its caller went away; the run stays accepted
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._draining = None
            # Only when the loop itself was cancelled (shutdown): none of these is answered.
            for _, _, future in [*batch, *self._waiting]:
                future.cancel()
            self._waiting = []
