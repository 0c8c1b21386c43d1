"""Placing steps on the x axes: epochs (fractional) and seconds since the start, an epoch in progress included."""
from __future__ import annotations

import pytest

from fastwatch.store import RunInfo, RunRecord
from fastwatch.store.tables import BatchRow, EpochRow
from fastwatch.view.timeline import timeline


def epoch(n: int, last_step: int) -> EpochRow:
    return EpochRow('r', n, 0, False, last_step, 1.0, 1.0, {}, 10.0, 0.0)


def batch(step: int, epoch: int, time: float) -> BatchRow:
    return BatchRow('r', step, epoch, 0, False, 1.0, 1.0, 1e-3, 0.9, time, None)


def test_steps_are_placed_in_epochs_and_seconds_and_the_epoch_in_progress_by_the_last_ones_length():
    run = RunRecord('r', None, 'running', 100.0, 100.0, 100.0, RunInfo(n_train=40, batch_size=4))
    epochs = [epoch(0, 9), epoch(1, 19)]  # 10 batches each
    times = {0: 101.0, 9: 110.0, 10: 112.0, 19: 121.0}  # 2 s of validation between the epochs
    line = timeline(run, epochs, times, batch(24, 2, 127.0))  # half-way through the third epoch
    assert line.place([0, 9, 14, 19, 24], 'epoch') == pytest.approx([0.1, 1.0, 1.5, 2.0, 2.5])
    assert line.place([0, 9, 10, 24], 'time') == pytest.approx([1.0, 10.0, 12.0, 27.0])
    assert line.place([3, 24], 'step') == [3, 24]
    first = timeline(run, [], {}, batch(4, 0, 105.0))  # no epoch ended: 40 items / 4 a batch = 10 batches
    assert first.place([4], 'epoch') == pytest.approx([0.5])
