"""What a definition is made of, apart from the registry that keeps them: a command for a
process-backed task."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")


@dataclass(frozen=True, slots=True)
class Command:
    """What a process-backed task runs. ``argv`` may be a function of the run's config."""

    argv: Sequence[str] | Callable[[dict[str, Any]], Sequence[str]]
    env_allow: Sequence[str] = DEFAULT_ENV_ALLOW
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
