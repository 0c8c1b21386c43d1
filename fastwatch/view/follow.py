"""How a dashboard follows its store while the page is open: `FollowPolicy` decides what each tick reads and when
the next tick is, `follow` is the loop that runs the ticks in the kernel.

While a shown run may still change, its feed is read every `POLL_SECONDS` (only what is new). The store's run list
is looked at every `RUNS_SECONDS` whatever is shown, so runs started after the page opened appear and state changes
show; where nothing changed that costs one cheap query. The server shuts the kernel of a page that went away.
"""
from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .feed import RunFeed, RunsFeed, RunUpdate

POLL_SECONDS = 0.25
RUNS_SECONDS = 3.0


@dataclass
class Poll:
    """What one tick read: whether the run list changed (`RunsFeed.runs`: added, renamed, in another state) and
    whether any run's summary did (`RunsFeed.summaries`), and what came of each shown run."""
    runs_changed: bool = False
    summaries_changed: bool = False
    updates: dict[str, RunUpdate] = field(default_factory=dict)


class FollowPolicy:
    "What a dashboard reads on each tick (`read`, on the reads' thread) and how long until the next (`interval`)."

    def __init__(self, runs: RunsFeed, runs_every: float = RUNS_SECONDS, poll_every: float = POLL_SECONDS):
        self.runs, self.runs_every, self.poll_every = runs, runs_every, poll_every
        self._runs_read_at = time.monotonic()

    def read(self, feeds: dict[str, RunFeed]) -> Poll:
        "Read what is due: the shown runs that may still change, and the run list when its time has come."
        poll = Poll()
        for run_id, feed in feeds.items():
            if not feed.followed: continue
            update = feed.poll()
            if update.new: poll.updates[run_id] = update
        if time.monotonic() - self._runs_read_at >= self.runs_every:
            self._runs_read_at = time.monotonic()
            poll.runs_changed, poll.summaries_changed = self.runs.poll()
        return poll

    def list_runs_next(self) -> None:
        "Read the run list at the next `read`, however recently it was read."
        self._runs_read_at = -float('inf')

    def interval(self, feeds: dict[str, RunFeed]) -> float:
        "Seconds until the next tick: soon while a shown run may change, else when the run list is due."
        if any(feed.followed for feed in feeds.values()): return self.poll_every
        return max(self.poll_every, self.runs_every - (time.monotonic() - self._runs_read_at))


async def follow(step: Callable, interval: float | Callable[[], float] = POLL_SECONDS,
                 lifetime: float | None = None, on_stop: Callable[[str], None] | None = None) -> None:
    """Call `step()` (a function or a coroutine function) while it returns True, every `interval` s (a number, or a
    function that says), for at most `lifetime` s (None: no limit); then tell `on_stop` why it stopped ('ended' or
    'lifetime'). An error in `step` ends the loop too ('error: ...')."""
    started = time.monotonic()
    reason = 'ended'
    try:
        while True:
            going = step()
            if inspect.isawaitable(going): going = await going
            if not going: break
            if lifetime is not None and time.monotonic() - started > lifetime:
                reason = 'lifetime'
                break
            await asyncio.sleep(interval() if callable(interval) else interval)
    except Exception as e:
        reason = f'error: {type(e).__name__}: {e}'
    if on_stop: on_stop(reason)
