"""JSON responses that always encode: content is never a reason for a 500.

Requests are checked on the way in (``runs.schemas.runs.check_storable``), workers store cleaned
values (``runs.domain.text.storable``), and stored JSON from before those rules is cleaned as
it is read (``loads_storable``). What is left to encode here, problem documents included, is
still answered whatever it holds, with U+FFFD and null in place of what JSON cannot carry.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import JSONResponse as _StarletteJSONResponse

from runs.domain.text import clean_text, storable


def dump_json(content: Any) -> bytes:
    try:
        return orjson.dumps(content)  # NaN and the infinities become null
    except TypeError:  # a lone surrogate (or a key that is not a string)
        text = json.dumps(
            storable(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
        return clean_text(text).encode("utf-8")


class JSONResponse(_StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return dump_json(content)
