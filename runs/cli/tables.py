"""The tables of the ``runs`` command, in one style: ids are never cut or wrapped, and each row
stays on one line. When the terminal is too narrow for every column at its least width, the
columns of least use are left out (the ones named last, unless a priority says otherwise),
and the ones kept are cut with an ellipsis rather than folded over several lines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console, RenderableType
from rich.table import Column, Table
from rich.text import Text

GAP = 3  # the space a column takes besides its text (padding, separator)


@dataclass(frozen=True)
class Col:
    """A column besides the id: ``keep`` orders which go first when space runs out (higher
    stays longer); below ``least`` characters it is left out rather than squeezed."""

    header: str
    keep: int = 0
    least: int = 6


def id_table(
    console: Console,
    id_header: str,
    columns: Sequence[Col | str],
    rows: Sequence[Sequence[RenderableType]],
) -> Table:
    """A table of ``rows`` (each: the id, then one cell per column) fitted to the console."""
    cols = [c if isinstance(c, Col) else Col(c) for c in columns]
    id_width = max([len(id_header), *(len(str(row[0])) for row in rows)])
    natural = [
        max([len(col.header), *(_length(row[i + 1]) for row in rows)]) for i, col in enumerate(cols)
    ]
    kept = _fitting(console.width, id_width, cols, natural)
    widths = _widths(console.width - id_width, cols, natural, kept)
    table = Table(
        Column(id_header, no_wrap=True, min_width=id_width),
        *(Column(cols[i].header, no_wrap=True, overflow="ellipsis", width=widths[i]) for i in kept),
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for row in rows:
        table.add_row(row[0], *(row[i + 1] for i in kept))
    return table


def fields_table(fields: Sequence[tuple[str, RenderableType]]) -> Table:
    """One record as ``name  value`` lines (values fold: they are the point of the view)."""
    table = Table(show_header=False, box=None, show_edge=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in fields:
        table.add_row(name, value)
    return table


def _fitting(width: int, id_width: int, cols: list[Col], natural: list[int]) -> list[int]:
    """The indexes of the columns that fit beside the ids, in their order."""
    kept = list(range(len(cols)))
    # The first to go: the lowest ``keep``, then the last named.
    order = sorted(kept, key=lambda i: (cols[i].keep, -i))
    while kept:
        least = sum(min(natural[i], cols[i].least) + GAP for i in kept)
        if id_width + least <= width:
            break
        kept.remove(order.pop(0))
    return kept


def _widths(room: int, cols: list[Col], natural: list[int], kept: list[int]) -> dict[int, int]:
    """Each kept column's width: its natural one, less what the room lacks, taken first from
    the columns of least use (never below their least)."""
    widths = {i: natural[i] for i in kept}
    excess = sum(widths.values()) + GAP * len(kept) - room
    for i in sorted(kept, key=lambda i: (cols[i].keep, -i)):
        if excess <= 0:
            break
        cut = min(excess, widths[i] - min(natural[i], cols[i].least))
        widths[i] -= cut
        excess -= cut
    return widths


def _length(cell: RenderableType) -> int:
    return len(cell.plain) if isinstance(cell, Text) else len(str(cell))
