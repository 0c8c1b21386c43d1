"""The store's runs side by side: one `RunSummary` a run, its columns for a table of runs (`fastwatch ls`).

A run's columns: its name and state, when it started and how long it ran, epochs done of those planned, the final
train and valid loss and every metric, the best value of each metric and its epoch, the keys of its
`WatchCallback(config=…)`, the most memory its process used (sampled), and the model, batch size and dataset
sizes of its info. Three reads in all: the runs, every run's epochs, and every run's peak memory.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from sqlalchemy import func, select

from .records import RunRecord
from .tables import epochs, system

# Metrics whose lower values are better; any other metric's best is its highest (accuracy, dice, F1, R²).
LOWER_IS_BETTER = re.compile(r'loss|error|mse|mae|rmse|msle|perplexity', re.IGNORECASE)


def lower_is_better(metric: str) -> bool: return bool(LOWER_IS_BETTER.search(metric))


@dataclass
class RunSummary:
    "One run as a table of runs shows it."
    run: RunRecord
    epochs_done: int = 0
    final: dict[str, object] = field(default_factory=dict)  # train_loss, valid_loss and each metric, last epoch's
    best: dict[str, tuple[float, int]] = field(default_factory=dict)  # metric (and valid_loss): (value, epoch)
    duration: float = 0.0
    peak: dict[str, float] = field(default_factory=dict)  # the most memory sampled: peak_rss_mb, peak_cuda_mb

    @property
    def metric_names(self) -> list[str]:
        "The metrics of its last epoch, in the order they were logged."
        return [name for name in self.final if name not in ('train_loss', 'valid_loss')]

    def columns(self) -> dict[str, object]:
        "Every column of the run, in order: what `fastwatch ls --json` prints and `--columns` picks from."
        run, info = self.run, self.run.info
        found = {'run': run.id, 'name': run.name, 'state': run.state, 'started': run.created_at,
                 'duration': self.duration, 'epochs': self.epochs_done, 'planned_epochs': info.planned_epochs,
                 **self.final}
        for name, (value, epoch) in self.best.items():
            found.update({f'best_{name}': value, f'best_{name}_epoch': epoch})
        found.update({f'config.{key}': value for key, value in (run.config or {}).items()})
        found.update(self.peak)
        found.update({'model': info.model, 'batch_size': info.batch_size, 'n_train': info.n_train,
                      'n_valid': info.n_valid})
        return found


def run_summaries(store, runs: list[RunRecord] | None = None) -> list[RunSummary]:
    "A summary of every run of a `Store` (or of those of `runs`, its records), newest first."
    runs = store.runs() if runs is None else runs
    if not runs: return []
    found = {run.id: RunSummary(run) for run in runs}
    table = epochs.table
    query = select(table).where(table.c.run_id.in_(list(found))).order_by(table.c.run_id, table.c.epoch)
    for row in (epochs.decode(row) for row in store.all_rows(query)):
        summary = found[row.run_id]
        summary.epochs_done += 1
        values = {'train_loss': row.train_loss, 'valid_loss': row.valid_loss, **row.metrics}
        summary.final = values
        for name, value in values.items():
            if name == 'train_loss' or not isinstance(value, (int, float)) or value != value: continue
            best = summary.best.get(name)
            better = best is None or (value < best[0] if lower_is_better(name) else value > best[0])
            if better: summary.best[name] = (value, row.epoch)
    if system.name not in store.absent:
        t = system.table
        peaks = select(t.c.run_id, func.max(t.c.rss_mb), func.max(t.c.cuda_allocated_mb)).group_by(t.c.run_id)
        for run_id, rss, cuda in store.all_rows(peaks.where(t.c.run_id.in_(list(found)))):
            found[run_id].peak = {'peak_rss_mb': rss, **({'peak_cuda_mb': cuda} if cuda is not None else {})}
    now = time.time()
    for summary in found.values():
        run = summary.run
        summary.duration = (now if run.state == 'live' else run.updated_at) - run.created_at
    return list(found.values())


def _sortable(value):
    "Numbers by value, anything else by its text."
    return (0, value, '') if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def sort_rows(rows: list[dict], column: str, descending: bool = False) -> list[dict]:
    "Rows of `RunSummary.columns()` sorted by one column, numbers by value; rows without it last, either way."
    present = sorted((row for row in rows if row.get(column) is not None), key=lambda row: _sortable(row[column]),
                     reverse=descending)
    return present + [row for row in rows if row.get(column) is None]
