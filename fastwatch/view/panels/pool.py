"""Widgets made as a panel first needs them and shown again with other content after (`Pool`): a page receives and
draws only the widgets it shows, and a new page of rows changes their values, not their widgets."""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar('T')


class Pool(Generic[T]):
    "Items made by `make()` as they are first needed, kept for the next time."

    def __init__(self, make: Callable[[], T]):
        self.make = make
        self.made: list[T] = []

    def take(self, count: int) -> list[T]:
        "The first `count` items, made now if there were fewer."
        self.made.extend(self.make() for _ in range(count - len(self.made)))
        return self.made[:count]
