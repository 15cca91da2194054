"""Schedules written in code, synced into a project's catalogue when a worker starts: new ones
are created, changed ones updated, and those no longer in the code paused with a reason (never
deleted: their history stays, and putting them back resumes them)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from runs.domain.errors import Conflict
from runs.domain.projects import Project
from runs.domain.schedules import DefinitionSource, ScheduleStatus, SourceSchedule
from runs.scheduling.catalogue import ScheduleService

log = logging.getLogger(__name__)

REMOVED = "removed from the source code"


@dataclass(frozen=True, slots=True)
class SyncResult:
    created: list[str]
    updated: list[str]
    paused: list[str]


def sync_source_schedules(
    service: ScheduleService, project: Project, declared: Sequence[SourceSchedule]
) -> SyncResult:
    existing = {s.source_trigger_id: s for s in service.source_schedules(project)}
    created: list[str] = []
    updated: list[str] = []
    for spec in declared:
        source = {"source_trigger_id": spec.id, "source_path": spec.path, "source_hash": spec.hash}
        found = existing.pop(spec.id, None)
        if found is None:
            try:
                service.create(project, spec.fields, source=source)
            except Conflict:  # another worker starting at the same time created it
                continue
            created.append(spec.id)
            continue
        back = found.status is ScheduleStatus.PAUSED and found.paused_reason == REMOVED
        if found.source_hash == spec.hash and found.source_path == spec.path and not back:
            continue
        changes = dict(spec.fields) if found.source_hash != spec.hash else {}
        if back:
            changes["status"] = ScheduleStatus.ACTIVE.value
        if changes:
            service.update(project, found.id, changes)
        service.set_source(project, found.id, path=spec.path, digest=spec.hash)
        updated.append(spec.id)
    paused = []
    for gone in existing.values():
        if (
            gone.definition_source is DefinitionSource.SOURCE
            and gone.status is ScheduleStatus.ACTIVE
        ):
            service.pause(project, gone.id, reason=REMOVED)
            paused.append(gone.source_trigger_id or gone.id)
    if created or updated or paused:
        log.info(
            "source schedules: %d created, %d updated, %d paused",
            len(created),
            len(updated),
            len(paused),
        )
    return SyncResult(created, updated, paused)
