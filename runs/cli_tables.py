"""Tables of the ``runs`` command: ids are never cut or wrapped, the other columns give way."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.table import Column, Table


def id_table(id_header: str, ids: Sequence[str], *headers: str) -> Table:
    """A table whose first column holds ``ids`` whole; its other columns fold when narrow."""
    width = max((len(i) for i in ids), default=len(id_header))
    return Table(
        Column(id_header, no_wrap=True, min_width=max(width, len(id_header))),
        *(Column(h, overflow="fold") for h in headers),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
