"""Target -> queue routing: fnmatch patterns, first match wins, else the default queue."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase


class Router:
    def __init__(self, table: Sequence[tuple[str, str]], default_queue: str) -> None:
        self._table = list(table)
        self._default = default_queue
        self._cache: dict[str, str] = {}

    @property
    def default_queue(self) -> str:
        return self._default

    def queue_for(self, target: str) -> str:
        queue = self._cache.get(target)
        if queue is None:
            queue = next(
                (q for pattern, q in self._table if fnmatchcase(target, pattern)), self._default
            )
            self._cache[target] = queue
        return queue

    def queues(self) -> list[str]:
        """Every queue a worker may need to consume, the default first."""
        return list(dict.fromkeys([self._default, *(q for _, q in self._table)]))
