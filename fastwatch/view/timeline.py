"""Where a run's steps fall on each x axis the charts offer (`X_AXES`): the step itself, the epoch (fractional:
2.5 is half-way through the third epoch, so runs of different lengths and batch sizes compare), or seconds since the
run started. A `Timeline` knows a run's knots, each epoch's first and last batch, and the latest batch; steps
between knots are interpolated. The epoch in progress is placed by the length of the one before it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..store import RunRecord
from ..store.tables import BatchRow, EpochRow

X_AXES = {'step': 'step', 'epoch': 'epoch', 'time': 'seconds since start'}  # axis: its label


@dataclass(frozen=True)
class Timeline:
    "A run's knots: steps, and the epoch and the seconds since the run started at each."
    steps: tuple[float, ...] = ()
    epochs: tuple[float, ...] = ()
    seconds: tuple[float, ...] = ()

    def place(self, steps, axis: str) -> list[float]:
        "Steps (or an epoch's last step) as x values on `axis`."
        if axis == 'step' or len(self.steps) < 2: return list(steps)
        return np.interp(np.asarray(steps, dtype=float), self.steps,
                         self.epochs if axis == 'epoch' else self.seconds).tolist()


def epoch_bounds(epochs: list[EpochRow]) -> list[tuple[int, int]]:
    "Each finished epoch's first and last step."
    starts = [0, *(epoch.step + 1 for epoch in epochs[:-1])]
    return list(zip(starts, (epoch.step for epoch in epochs)))


def timeline(run: RunRecord, epochs: list[EpochRow], times: dict[int, float], last: BatchRow | None) -> Timeline:
    """The knots of a run from its finished epochs, the times of their first and last batches (`times`, by step:
    `Store.batch_times`) and its latest batch row."""
    knots = [(-1.0, 0.0, 0.0)]  # before the first batch: epoch 0, the run's start
    for epoch, (first, end) in zip(epochs, epoch_bounds(epochs)):
        length = end - first + 1
        for step, done in ((first, 1 / length), (end, 1.0)):
            if step in times: knots.append((step, epoch.epoch + done, times[step] - run.created_at))
    if last is not None and (not epochs or last.step > epochs[-1].step):
        first = epochs[-1].step + 1 if epochs else 0
        bounds = epoch_bounds(epochs)
        length = bounds[-1][1] - bounds[-1][0] + 1 if bounds else _batches_per_epoch(run, last.step + 1)
        knots.append((last.step, last.epoch + min(1.0, (last.step - first + 1) / length), last.time - run.created_at))
    knots = sorted(dict((knot[0], knot) for knot in knots).values())
    steps, at_epoch, seconds = zip(*knots)
    return Timeline(steps, at_epoch, seconds)


def _batches_per_epoch(run: RunRecord, seen: int) -> int:
    "How many batches an epoch has, before the first ends: from the data's size and batch size, or all seen so far."
    info = run.info
    return max(seen, info.n_train // info.batch_size) if info.n_train and info.batch_size else seen
