"""Downsampling and the block-summary pyramid: long series drawn from a few points that keep their extremes."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fastwatch.store.blocks import BLOCK_FANOUT, BLOCK_LEVELS, BLOCK_STEPS, Pyramid, block_span
from fastwatch.store.downsample import minmax_buckets, summarise
from fastwatch.store.tables import BatchRow


def rows(run_id: str, steps, loss=lambda step: float(step)) -> list[BatchRow]:
    return [BatchRow(run_id, step, 0, 0, False, loss(step), loss(step), 1e-3, 0.9, 0.0, None) for step in steps]


def test_minmax_buckets_keep_each_ranges_extremes_and_skip_missing_values():
    steps = np.arange(1000)
    values = np.sin(steps / 10.0)
    values[500], values[501] = 50.0, np.nan
    out_steps, out_values = minmax_buckets(steps, values, steps, values, 20)
    assert len(out_steps) <= 20 and list(out_steps) == sorted(out_steps)
    assert 50.0 in out_values and not np.isnan(out_values).any() and out_values.min() == pytest.approx(-1, abs=1e-3)


def test_summarise_skips_nan_and_marks_a_series_with_no_value():
    lows = np.array([[1.0, np.nan], [0.5, np.nan]])
    steps = np.array([[0, 0], [1, 1]], dtype=float)
    summary = summarise(lows, steps, lows, steps)
    assert summary[0].tolist() == [0.5, 1, 1.0, 0] and np.isnan(summary[1]).all()


def test_a_block_closes_with_the_row_that_completes_it_and_its_parent_with_its_last_child():
    pyramid = Pyramid()
    closed, state = pyramid.add(rows('r', range(BLOCK_STEPS - 1)))
    assert closed == []  # the block is still open ...
    pyramid.keep(state)
    closed, state = pyramid.add(rows('r', [BLOCK_STEPS - 1]))
    assert [(b.level, b.block, b.last_step) for b in closed] == [(0, 0, BLOCK_STEPS - 1)]  # ... and closes here
    pyramid.keep(state)
    closed, _ = pyramid.add(rows('r', range(BLOCK_STEPS, BLOCK_STEPS * BLOCK_FANOUT)))
    # The level-1 block closes with its last child, in the same write: `last_step` orders every block.
    assert [(b.level, b.block) for b in closed] == [(0, 1), (0, 2), (0, 3), (1, 0)]
    assert closed[-1].last_step == closed[-2].last_step == BLOCK_STEPS * BLOCK_FANOUT - 1


def test_a_summary_is_the_min_and_max_of_its_rows_and_where_they_are():
    values = {step: math.sin(step) for step in range(BLOCK_STEPS)}
    closed, _ = Pyramid().add(rows('r', range(BLOCK_STEPS), loss=values.get))
    [block] = [b for b in closed if b.level == 0]
    low, high = min(values, key=values.get), max(values, key=values.get)
    assert (block.loss_min, block.loss_min_step, block.loss_max, block.loss_max_step) == (
        values[low], low, values[high], high)


def test_the_run_ending_closes_every_open_block():
    closed, state = Pyramid().add(rows('r', range(10)), ended_runs=['r'])
    assert [(b.level, b.last_step) for b in closed] == [(level, 9) for level in range(BLOCK_LEVELS)]
    assert state == {'r': {}}


def test_a_failed_write_leaves_the_pyramid_as_it_was():
    pyramid = Pyramid()
    pyramid.keep(pyramid.add(rows('r', range(10)))[1])
    closed, _ = pyramid.add(rows('r', range(10, BLOCK_STEPS)))  # written? no: not kept
    assert len(closed) == 1 and len(pyramid.open['r'][0].points) == 10
    again, _ = pyramid.add(rows('r', range(10, BLOCK_STEPS)))
    assert again == closed  # the retry closes the same block, with the same summary


def test_rows_lost_meanwhile_close_the_open_block_early():
    closed, _ = Pyramid().add(rows('r', [0, 1, 2 * BLOCK_STEPS]))  # steps 2 .. 2 * BLOCK_STEPS - 1 never came
    assert [(b.level, b.block, b.last_step) for b in closed] == [(0, 0, 1)]
    assert block_span(1) == BLOCK_STEPS * BLOCK_FANOUT
