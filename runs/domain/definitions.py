"""A definition: a target workers registered, with what the API shows of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Definition:
    target: str
    kind: str
    name: str | None = None
    description: str | None = None
    input_schema: Any = None
    output_schema: Any = None
