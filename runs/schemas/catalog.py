"""Wire models of what is around runs: definitions, a workflow run's nodes, the caller's
project."""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    Field,
)

from runs.domain.definitions import Definition
from runs.domain.workflows import NodeRecord
from runs.schemas.common import (
    timestamp,
)
from runs.schemas.runs import NodeStatusWire, RunErrorOut


class DefinitionOut(BaseModel):
    target: str
    kind: str
    name: str | None
    description: str | None
    input_schema: Any
    output_schema: Any

    @classmethod
    def from_definition(cls, definition: Definition) -> DefinitionOut:
        return cls(**{name: getattr(definition, name) for name in cls.model_fields})


class DefinitionListOut(BaseModel):
    data: list[DefinitionOut]


class NodeOut(BaseModel):
    """A node of a workflow run: a step, a group, or a wait."""

    node_id: str
    position: int = Field(description="its place in the workflow's plan, from 0")
    status: NodeStatusWire
    attempt: int
    arm: str | None = Field(description="the branch a branch node took")
    output: Any
    error: RunErrorOut | None
    logs: str | None
    wait_event: str | None = Field(
        description="the event a waiting node needs (POST /signals); null for an approval"
    )
    deadline: str | None
    started_at: str | None
    completed_at: str | None

    @classmethod
    def from_node(cls, node: NodeRecord) -> NodeOut:
        return cls(
            node_id=node.node_id,
            position=node.position,
            status=node.status.value,
            attempt=node.attempt,
            arm=node.arm,
            output=node.output,
            error=RunErrorOut.from_error(node.error),
            logs=node.logs,
            wait_event=node.wait_event,
            deadline=timestamp(node.deadline),
            started_at=timestamp(node.started_at),
            completed_at=timestamp(node.completed_at),
        )


class NodeListOut(BaseModel):
    data: list[NodeOut]


class ProjectOut(BaseModel):
    id: str
    slug: str
    name: str


class WhoAmIOut(BaseModel):
    """The project the request's token belongs to."""

    project: ProjectOut
