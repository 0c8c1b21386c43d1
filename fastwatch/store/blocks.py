"""The block-summary pyramid: min/max summaries of consecutive batch rows, so that a long run is drawn from a few
thousand summaries instead of every row (`Store.batches_downsampled`).

A level-0 block summarises BLOCK_STEPS consecutive steps; a level-L block summarises BLOCK_FANOUT blocks of level
L - 1. A block closes with the row that completes it (or when a later block's row comes first, after rows were lost,
or when its run ends), and a parent closes with its last child: every block is written in the same transaction as
the batch row that closed it, so `last_step` orders the `batch_blocks` rows as publishers and followers read them.
`Store.write` runs the pyramid: the writer hands it batch rows, never blocks. The open blocks live in the memory
of that one `Store` object, so a run's batch rows and its end must all be written through it, as the run's writer
does: a second `Store` writing some of them would summarise only those rows, and close blocks with the same key
(run, level, block) as the first, whose write of them the database then refuses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np

from .downsample import summarise
from .tables import SUMMARISED, SUMMARY_FIELDS, BlockRow

BLOCK_STEPS, BLOCK_FANOUT, BLOCK_LEVELS = 64, 4, 4
summarised = attrgetter(*SUMMARISED)  # a batch row's values that blocks summarise
STEP_FIELDS = {i for i, name in enumerate(SUMMARY_FIELDS) if name.endswith('step')}


def block_span(level: int) -> int:
    "How many steps a block of `level` covers."
    return BLOCK_STEPS * BLOCK_FANOUT ** level


@dataclass
class OpenBlock:
    "A block still taking points: batch values (level 0) or its children's summaries, and each one's last step."
    block: int
    points: list = field(default_factory=list)
    last_steps: list = field(default_factory=list)

    def copy(self) -> OpenBlock: return OpenBlock(self.block, list(self.points), list(self.last_steps))


class Pyramid:
    """The open blocks of each run. `add` works on a copy and returns the rows it closes with the state after them;
    `keep` that state once those rows are written: a failed write leaves the pyramid as it was."""

    def __init__(self):
        self.open: dict[str, dict[int, OpenBlock]] = {}

    def add(self, batch_rows, ended_runs=()) -> tuple[list[BlockRow], dict]:
        "The block rows that `batch_rows` (in step order per run) and the end of `ended_runs` close."
        state, closed = {}, []
        def levels(run_id: str) -> dict[int, OpenBlock]:
            if run_id not in state:
                state[run_id] = {level: block.copy() for level, block in self.open.get(run_id, {}).items()}
            return state[run_id]
        run_id = open_levels = None
        for row in batch_rows:
            if row.run_id != run_id: run_id, open_levels = row.run_id, levels(row.run_id)
            step, current = row.step, open_levels.get(0)
            if current is not None and current.block == step // BLOCK_STEPS and step % BLOCK_STEPS < BLOCK_STEPS - 1:
                current.points.append(summarised(row))  # the common case, kept short: a row inside its block
                current.last_steps.append(step)
            else: _add(open_levels, run_id, 0, step, summarised(row), step, closed)
        for run_id in ended_runs:
            open_levels = levels(run_id)
            for level in range(BLOCK_LEVELS):
                if level in open_levels: _close(open_levels, run_id, level, closed)
        return closed, state

    def keep(self, state: dict) -> None:
        "Keep the state `add` returned, once its rows are written; an ended run's entry goes."
        for run_id, levels in state.items():
            if levels: self.open[run_id] = levels
            else: self.open.pop(run_id, None)


def _add(levels: dict[int, OpenBlock], run_id: str, level: int, index: int, point, last_step: int,
         closed: list) -> None:
    """Add a point to the open block of `level`: a batch row's values at step `index` (level 0), or the summary of
    the closed child block `index` (the levels above). The block closes when the point completes it."""
    per_block = BLOCK_STEPS if level == 0 else BLOCK_FANOUT
    block = index // per_block
    current = levels.get(level)
    if current is not None and current.block != block:  # rows were lost: the open block ends here
        _close(levels, run_id, level, closed)
        current = None
    if current is None: current = levels[level] = OpenBlock(block)
    current.points.append(point)
    current.last_steps.append(last_step)
    if index % per_block == per_block - 1: _close(levels, run_id, level, closed)


def _close(levels: dict[int, OpenBlock], run_id: str, level: int, closed: list) -> None:
    "Write the summary of a level's open block, and pass it on to the level above."
    current = levels.pop(level)
    if level == 0:  # batch values: each is its own min and max
        values = np.array(current.points, dtype=float)  # None -> NaN
        steps = np.broadcast_to(np.array(current.last_steps, dtype=float)[:, None], values.shape)
        summary = summarise(values, steps, values, steps)
    else:
        points = np.stack(current.points)  # (blocks, series, 4)
        summary = summarise(points[:, :, 0], points[:, :, 1], points[:, :, 2], points[:, :, 3])
    # Flat in the table's column order (each series' SUMMARY_FIELDS); steps as ints, NaN as NULL.
    flat = [None if v != v else int(v) if i % len(SUMMARY_FIELDS) in STEP_FIELDS else v
            for i, v in enumerate(summary.ravel().tolist())]
    closed.append(BlockRow(run_id, level, current.block, current.last_steps[-1], *flat))
    if level + 1 < BLOCK_LEVELS:
        _add(levels, run_id, level + 1, current.block, summary, current.last_steps[-1], closed)
