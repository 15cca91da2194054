"""Reading stored JSON text: fast (orjson), exact past 64 bits (the standard library where a
number may be that long), and into values that can always be written again."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from runs.domain.text import storable

# What in JSON text parses into a value that cannot be encoded again: a surrogate's escape or
# its raw bytes (Python's parser lets both through), or a non-finite number.
_SUSPECT_TEXT = re.compile(r"\\u[dD][89abcdefABCDEF]|[\ud800-\udfff]|NaN|Infinity")
_SUSPECT_BYTES = re.compile(rb"\\u[dD][89abcdefABCDEF]|\xed[\xa0-\xbf]|NaN|Infinity")


# 19 digits in a row: perhaps an integer past 64 bits, which orjson would read as a float.
_LONG_NUMBER = re.compile(rb"[0-9]{19}")


def dumps(value: Any) -> str:
    """JSON text of a value: by orjson, unless it holds what orjson refuses (an integer past
    64 bits, a key that is not a string), which the standard library writes."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"))


def loads(text: str | bytes | memoryview) -> Any:
    """Parse JSON text: by orjson, unless the text may hold an integer past 64 bits (a JSON
    number may be any size), which the standard library reads exactly."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    if _LONG_NUMBER.search(data):
        return json.loads(data)
    return orjson.loads(data)


def loads_storable(text: str | bytes) -> Any:
    """Parse stored JSON text into a value that can always be encoded (``storable``).

    Only records from before the API and the workers cleaned values can need it: the text is
    scanned first, so that clean text costs one search and is parsed as it is."""
    suspect = _SUSPECT_BYTES.search(text) if isinstance(text, bytes) else _SUSPECT_TEXT.search(text)
    if suspect is None:
        return loads(text)
    return storable(json.loads(text))  # the standard library lets surrogates and NaN through
