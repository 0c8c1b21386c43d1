"""Whether a page has drawn its charts (`Drawn`). What a page does not need for its first picture (following the
store, reading the run's items) waits for it, so that the kernel answers the page's first requests at once: the
widget manager of a Voila page waits 4 s for its kernel to send the page's widgets, and a page whose kernel is
later never shows them ('Loading widget...'), which a machine busy with a training and many pages made happen."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

DRAWN_WAIT_SECONDS = 10  # a page that never says it drew (no browser, charts hidden) goes on after this long


class Drawn:
    "The page's first drawing: `then(callback)` runs after it; `set()` says it happened (a chart's DocumentReady)."

    def __init__(self):
        self.done = False
        self.waiting: list[Callable[[], None]] = []

    def then(self, callback: Callable[[], None]) -> None:
        """Call `callback()` on the kernel's loop once the page has drawn (soon if it has); outside a kernel, at
        once."""
        try: loop = asyncio.get_running_loop()
        except RuntimeError:
            callback()
            return
        if self.done: loop.call_soon(callback)
        else: self.waiting.append(callback)

    def expect(self, seconds: float = DRAWN_WAIT_SECONDS) -> None:
        "The page is on its way: if it has not said it drew in `seconds`, go on as if it had."
        try: asyncio.get_running_loop().call_later(seconds, self.set)
        except RuntimeError: self.set()

    def set(self) -> None:
        "The page has drawn (or had long enough to): run what waited for it."
        if self.done: return
        self.done = True
        waiting, self.waiting = self.waiting, []
        for callback in waiting: callback()
