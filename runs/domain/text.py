"""JSON values that can always be stored and read back.

PostgreSQL refuses NUL characters in text and JSONB and rejects ``NaN``; a lone UTF-16
surrogate (``"\\ud800"``, or the bytes ``ED A0 80`` that Python's JSON parser lets through)
cannot be encoded as UTF-8 at all, so a record holding one breaks every read. The API refuses
such values (``unstorable``); what workers produce is stored in a cleaned form (``storable``).
"""

from __future__ import annotations

import math
import re
from typing import Any

REPLACEMENT = "\ufffd"
# How deep arrays and objects may nest in what the API accepts.
MAX_DEPTH = 64
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with each NUL character and each lone surrogate replaced by U+FFFD."""
    if _UNSTORABLE_CHARACTER.search(text) is None:
        return text
    return _UNSTORABLE_CHARACTER.sub(REPLACEMENT, text)


def storable(value: Any) -> Any:
    """``value`` with every string (dictionary keys too) cleaned by ``clean_text`` and every
    non-finite float (NaN, infinities) turned into ``None``; tuples become lists."""
    kind = type(value)  # the exact types first: this runs on every event a worker stores
    if kind is str:
        return clean_text(value)
    if kind is dict:
        return {(clean_text(k) if type(k) is str else k): storable(v) for k, v in value.items()}
    if kind is list:
        return [storable(v) for v in value]
    if kind is int or kind is bool or value is None:
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {(clean_text(k) if isinstance(k, str) else k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


def printable(text: str) -> str:
    """``text`` safe to show in a message: unstorable characters as ``\\uXXXX`` escapes."""
    return _UNSTORABLE_CHARACTER.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def unstorable(value: Any) -> tuple[str, str] | None:
    """The first thing in ``value`` that cannot be stored, as (where, what), else ``None``.

    ``where`` is a path such as ``a.b[2]`` (empty for ``value`` itself), with unstorable
    characters of keys escaped so that it can be shown. Nesting deeper than ``MAX_DEPTH``
    counts as unstorable too: every JSON encoder and decoder on the way recurses.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            found = _UNSTORABLE_CHARACTER.search(item)
            if found is not None:
                return where, _describe(found.group(), "")
        elif isinstance(item, float) and not math.isfinite(item):
            return where, f"the number {item!r}, which is not JSON"
        elif isinstance(item, dict | list | tuple) and depth >= MAX_DEPTH:
            return where, f"arrays or objects nested deeper than {MAX_DEPTH} levels"
        elif isinstance(item, dict):
            for key, inner in reversed(item.items()):
                path = f"{where}.{printable(str(key))}".lstrip(".")
                bad_key = _UNSTORABLE_CHARACTER.search(key) if isinstance(key, str) else None
                if bad_key is not None:
                    return path, _describe(bad_key.group(), "a key with ")
                stack.append((inner, path, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend(
                (inner, f"{where}[{i}]", depth + 1) for i, inner in reversed(list(enumerate(item)))
            )
    return None


def _describe(character: str, prefix: str) -> str:
    if character == "\x00":
        return f"{prefix}a NUL character (\\u0000), which cannot be stored"
    return f"{prefix}a lone UTF-16 surrogate (\\u{ord(character):04x}), which is not valid Unicode"
