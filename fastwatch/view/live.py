"""Following a run: what the dashboard knows of it, what is new in the store since, and the task that polls.

`RunFeed` keeps the cursor (last batch step and epoch read) so each poll reads only new rows. `follow` is the
kernel's asyncio loop: it stops when there is nothing left to follow and after a maximum lifetime, because a loop
keeps Voila's idle culler from removing the kernel of a page nobody looks at any more.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..store import Store

MAX_POINTS = 2000  # points per series sent to the browser; more are downsampled (min/max buckets)
POLL_SECONDS = 0.25
LIFETIME_SECONDS = 3600.0


def fit_spans(epochs: list[dict], last: dict | None) -> list[dict]:
    """The step range of each fit (fine_tune: frozen body, then unfrozen) from the finished epochs and the latest
    batch row: `[{'fit', 'frozen', 'start', 'end'}]`."""
    spans: dict[int, dict] = {}
    end = -1
    for row in [*epochs, *([last] if last else [])]:
        span = spans.setdefault(row['fit'], {'fit': row['fit'], 'frozen': bool(row['frozen']), 'start': end + 1})
        span['end'] = end = max(end, row['step'])
    return list(spans.values())


class RunFeed:
    "One run as the dashboard shows it: `snapshot()` reads it whole (downsampled), `poll()` what came since."

    def __init__(self, store: Store, run_id: str, max_points: int = MAX_POINTS):
        self.store, self.run_id, self.max_points = store, run_id, max_points
        self.cursor: int | None = None  # last batch step read
        self.epochs: list[dict] = []
        self.last: dict | None = None  # the latest batch row
        self.run: dict = store.run(run_id)

    def snapshot(self) -> dict:
        "`{'series': {name: {'x', 'y'}}, 'epochs', 'spans'}` with each series at most about `max_points` long."
        self.run = self.store.run(self.run_id)
        down = self.store.batches_downsampled(self.run_id, n=self.max_points)
        self.cursor = down['cursor']
        self.epochs = self.store.epochs(self.run_id)
        self.last = self.store.last_batch(self.run_id)
        series = {name: {'x': points['step'], 'y': points['value']} for name, points in down['series'].items()}
        return {'series': series, 'epochs': self.epochs, 'spans': fit_spans(self.epochs, self.last)}

    def poll(self) -> dict | None:
        """What is new since the last snapshot or poll: `{'batches': columns, 'epochs': new rows, 'spans',
        'run'}`, or None when nothing changed. `'reload': True` when so much came that a snapshot is cheaper."""
        before = self.run
        self.run = self.store.run(self.run_id)
        batches = self.store.batches(self.run_id, since=self.cursor)
        epochs = self.store.epochs(self.run_id)
        new_epochs = epochs[len(self.epochs):]
        changed = (self.run['state'], self.run['updated_at']) != (before['state'], before['updated_at'])
        if not batches['step'] and not new_epochs and not changed: return None
        if len(batches['step']) > self.max_points: return {'reload': True, 'run': self.run}
        if batches['step']:
            self.cursor = batches['step'][-1]
            self.last = {name: values[-1] for name, values in batches.items()}
        self.epochs = epochs
        return {'batches': batches, 'epochs': new_epochs, 'spans': fit_spans(self.epochs, self.last),
                'run': self.run}


async def follow(step: Callable[[], bool], interval: float = POLL_SECONDS,
                 lifetime: float = LIFETIME_SECONDS, on_stop: Callable[[str], None] | None = None) -> None:
    """Call `step()` every `interval` s while it returns True and for at most `lifetime` s; then tell `on_stop`
    why it stopped ('ended' or 'lifetime'). Errors in `step` end the loop too ('error: ...')."""
    started = time.monotonic()
    reason = 'ended'
    try:
        while step():
            if time.monotonic() - started > lifetime:
                reason = 'lifetime'
                break
            await asyncio.sleep(interval)
    except Exception as e:
        reason = f'error: {type(e).__name__}: {e}'
    if on_stop: on_stop(reason)
