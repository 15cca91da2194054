"""Reading a ``text/event-stream`` line by line (the WHATWG rules the API's frames use)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Frame:
    id: str | None
    event: str | None
    data: str


class FrameReader:
    """Feed it lines; it returns a frame at each blank line that ends one with data.
    Comments (heartbeats) and frames without data return None."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> Frame | None:
        if line == "":
            frame = Frame(self._id, self._event, "\n".join(self._data)) if self._data else None
            self._event, self._data = None, []
            return frame
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None
