"""The catalogue of definitions the workers have registered, as the API sees it.

Workers write their definitions at start-up; the API checks targets against the catalogue
without importing any worker code. Positive answers are cached for a few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import sqlalchemy as sa

from runs.domain.clock import utcnow
from runs.domain.definitions import Definition
from runs.domain.errors import UnknownTarget
from runs.persistence import definitions


class DefinitionCatalog:
    def __init__(self, engine: sa.Engine, *, cache_seconds: float) -> None:
        self._engine = engine
        self._cache_seconds = cache_seconds
        self._known: set[str] = set()
        self._loaded_at = float("-inf")

    def register(self, items: Iterable[Definition]) -> None:
        with self._engine.begin() as conn:
            definitions.upsert_definitions(conn, items, utcnow())
        self._loaded_at = float("-inf")

    def list(self) -> list[Definition]:
        with self._engine.connect() as conn:
            return definitions.list_definitions(conn)

    def require(self, target: str) -> None:
        if target in self._known and time.monotonic() - self._loaded_at < self._cache_seconds:
            return
        with self._engine.connect() as conn:
            self._known = definitions.known_targets(conn)
        self._loaded_at = time.monotonic()
        if target not in self._known:
            raise UnknownTarget(
                f"target {target!r} is not registered by any worker; check the id, or start a "
                "worker whose RUNS_DEFINITIONS modules define it",
                field="request.target",
            )
