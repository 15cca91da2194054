"""What every wire model shares: the base of request models (strict, storable values, whole
numbers as JSON Schema counts them), the problem document, paging and timestamps."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, overload

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)
from pydantic_core import PydanticCustomError

from runs.domain.text import unstorable


def check_storable(value: Any) -> Any:
    """Refuse what cannot be stored and read back: lone UTF-16 surrogates (as escapes or as
    raw bytes), NUL characters and NaN/Infinity, in keys and values at any depth.

    Python's JSON parser accepts all of them; each would otherwise fail a write, or poison the
    record for every later read.
    """
    found = unstorable(value)
    if found is not None:
        where, what = found
        raise PydanticCustomError(
            "unstorable_value",
            "contains {what}{where}; send valid Unicode text and finite numbers",
            {"what": what, "where": f" (at {where})" if where else ""},
        )
    return value


# Documented on every string of a request that has no pattern of its own.
NO_NUL = "^[^\\x00]*$"


def _document_text(schema: dict[str, Any]) -> None:
    """OpenAPI: strings carry no NUL (``check_storable`` refuses them with its own message)."""
    for prop in schema.get("properties", {}).values():
        for branch in [prop, *prop.get("anyOf", ())]:
            if branch.get("type") == "string" and "pattern" not in branch and "enum" not in branch:
                branch["pattern"] = NO_NUL


def _whole_number(value: Any) -> Any:
    """JSON Schema's ``integer`` holds 3.0 as well as 3: the strict models take it as 3."""
    if type(value) is float and value.is_integer() and abs(value) <= 2**63:
        return int(value)
    return value


# An integer field of a request: a JSON integer, or a number with a zero fraction (6225.0).
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


# Fields whose rule the service checks with a message of its own document it through
# ``json_schema_extra`` (an enum or a pattern), so that OpenAPI says what is accepted.
class RequestModel(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra=_document_text)

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return value if isinstance(value, BaseModel) else check_storable(value)


class ProblemFieldOut(BaseModel):
    field: str
    message: str


class ProblemOut(BaseModel):
    """An ``application/problem+json`` error (RFC 9457), the body of every error answer."""

    type: str
    title: str
    status: int
    detail: str = Field(description="what went wrong and how to fix it")
    instance: str | None = Field(default=None, description="the path of the request")
    field: str | None = Field(default=None, description="the one field at fault, if one is")
    errors: list[ProblemFieldOut] | None = Field(
        default=None, description="each field at fault, for a request that failed validation"
    )
    request_id: str | None = Field(
        default=None, description="on a 500: the id under which the server logged the failure"
    )
    checks: dict[str, str] | None = Field(
        default=None, description="on /readyz: the state of each dependency"
    )


class PageInfo(BaseModel):
    self: str | None = None
    first: None = None
    next: str | None = None
    prev: str | None = None


@overload
def timestamp(moment: datetime) -> str: ...


@overload
def timestamp(moment: None) -> None: ...


@overload
def timestamp(moment: datetime | None) -> str | None: ...


def timestamp(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat().replace("+00:00", "Z")
