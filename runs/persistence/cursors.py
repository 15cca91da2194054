"""Opaque keyset cursors of pages sorted by (created_at, key) descending."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime

from runs.domain.errors import InvalidRequest


def encode_cursor(created_at: datetime, key: str) -> str:
    raw = json.dumps([created_at.isoformat(), key], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(
    cursor: str, *, key_pattern: re.Pattern[str] | None = None
) -> tuple[datetime, str]:
    """The (created_at, key) of a cursor this server issued; 400 naming ``cursor`` otherwise."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, key = json.loads(base64.urlsafe_b64decode(padded.encode()))
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None or not isinstance(key, str):
            raise ValueError(cursor)
        moment.astimezone(UTC)  # raises OverflowError for dates that do not fit
        if key_pattern is not None and not key_pattern.fullmatch(key):
            raise ValueError(cursor)
    except (ValueError, TypeError, RecursionError, OverflowError, binascii.Error) as exc:
        raise InvalidRequest(
            "cursor is not one this server issued; pass page_info.next of a previous page",
            field="cursor",
        ) from exc
    return moment, key
