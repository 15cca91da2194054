"""Driving both SDK clients from one test: the async one through an adapter that runs each
call on its own event loop and gathers what async iterators yield."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from runs.client import AsyncRunsClient, RunsClient


class BlockingAsyncClient:
    """``AsyncRunsClient`` with the synchronous client's call shapes."""

    def __init__(self, client: AsyncRunsClient) -> None:
        self._client = client
        self._loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        return self._blocking(attribute)

    def _blocking(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if inspect.isasyncgen(result):
                generator = result

                async def gather() -> list[Any]:
                    return [item async for item in generator]

                return iter(self._loop.run_until_complete(gather()))
            if inspect.iscoroutine(result):
                return self._loop.run_until_complete(result)
            return result

        return call

    def close(self) -> None:
        self._loop.run_until_complete(self._client.close())
        self._loop.close()


def make_client(flavour: str, **options: Any) -> Any:
    """A ``RunsClient``, or an ``AsyncRunsClient`` behind ``BlockingAsyncClient``."""
    if flavour == "sync":
        return RunsClient(**options)
    return BlockingAsyncClient(AsyncRunsClient(**options))
