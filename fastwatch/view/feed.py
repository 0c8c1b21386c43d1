"""What a dashboard knows of a store, and what is new in it since: `RunFeed` for one run (its record, batch
series, epochs, alerts), `ItemsFeed` for the items of one split of a run, `RunsFeed` for the store's list of runs.
Each keeps its cursors, so that a poll reads only what is new, one query a table; `RunsFeed` looks at a store where
nothing runs with one cheap query.

Feeds only read (they are called away from the kernel's event loop, `reads.py`); panels render what they return.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..store import RunRecord, Store
from ..store.decisions import current
from ..store.dynamics import DataMap, DataMapBuilder, thumbnails
from ..store.runs_table import RunSummary, run_summaries
from ..store.tables import (
    AlertRow,
    BatchRow,
    DecisionRow,
    EpochRow,
    RunTable,
    SystemRow,
    decisions,
    item_epochs,
    item_images,
    items,
    system,
    top_losses,
)
from .html import class_label
from .timeline import Timeline, epoch_bounds, timeline

MAX_POINTS = 2000  # points per series sent to the browser; more are downsampled (min/max buckets)
FOLLOWED_STATES = ('live', 'stale')  # states in which a run may still change


def fit_spans(epochs: list[EpochRow], last: BatchRow | None) -> list[dict]:
    """The step range of each fit (fine_tune: frozen body, then unfrozen) from the finished epochs and the latest
    batch row: `[{'fit', 'frozen', 'start', 'end'}]`."""
    spans: dict[int, dict] = {}
    end = -1
    for row in [*epochs, *([last] if last else [])]:
        span = spans.setdefault(row.fit, {'fit': row.fit, 'frozen': bool(row.frozen), 'start': end + 1})
        span['end'] = end = max(end, row.step)
    return list(spans.values())


SYSTEM_SERIES = ('cpu_percent', 'rss_mb', 'cuda_allocated_mb', 'cuda_reserved_mb', 'gpu_percent')


def system_series(rows: list[SystemRow]) -> dict[str, dict]:
    "The process's samples as series over the training's steps (0 before its first batch), one a column."
    steps = [row.step or 0 for row in rows]
    return {name: {'x': steps, 'y': [getattr(row, name) for row in rows]} for name in SYSTEM_SERIES}


def metric_order(names: list[str], epochs: list[EpochRow]) -> list[str]:
    """A run's metrics: `names` (its info's, in the order fastai's Recorder logs them), then any others its epochs
    logged, by name (a store that did not keep the order); only `names` before the first epoch."""
    logged = {name for epoch in epochs for name in epoch.metrics}
    return [n for n in names if n in logged or not epochs] + sorted(logged - set(names))


@dataclass
class RunUpdate:
    """What came of a run since the last read: its record, new batch rows (as columns), new epochs and alerts, and
    its timeline now. `reload`: so many batch rows came that the charts should take a fresh snapshot instead."""
    run: RunRecord
    timeline: Timeline = Timeline()
    batches: dict[str, list] = field(default_factory=dict)
    epochs: list[EpochRow] = field(default_factory=list)
    alerts: list[AlertRow] = field(default_factory=list)
    system: list[SystemRow] = field(default_factory=list)
    changed: bool = False  # the record's state or update time changed
    reload: bool = False

    @property
    def new(self) -> bool:
        "Whether anything came."
        return bool(self.changed or self.reload or self.batches.get('step') or self.epochs or self.alerts
                    or self.system)


class RunFeed:
    """One run as the dashboard shows it: `snapshot()` reads it whole (series downsampled), `poll()` what came
    since. It keeps the run's record, every epoch and alert, and the latest batch row."""

    def __init__(self, store: Store, run_id: str, max_points: int = MAX_POINTS):
        self.store, self.run_id, self.max_points = store, run_id, max_points
        self.cursor: int | None = None  # last batch step read
        self.epochs: list[EpochRow] = []
        self.alerts: list[AlertRow] = []
        self.system: list[SystemRow] = []
        self.last: BatchRow | None = None  # the latest batch row
        self.times: dict[int, float] = {}  # the time of each finished epoch's first and last batch
        self.run: RunRecord = store.run(run_id)

    @property
    def followed(self) -> bool:
        "Whether the run may still change."
        return self.run.state in FOLLOWED_STATES

    def snapshot(self) -> dict:
        """`{'series': {name: {'x', 'y'}}, 'epochs', 'spans', 'timeline'}` with each series at most about
        `max_points` long."""
        self.run = self.store.run(self.run_id)
        down = self.store.batches_downsampled(self.run_id, n=self.max_points)
        self.cursor = down['cursor']
        self.epochs = self.store.epochs(self.run_id)
        self.alerts = self.store.alerts(self.run_id)
        self.system = self.store.rows(system, self.run_id)
        self.last = self.store.last_batch(self.run_id)
        self.times = self._times(self.epochs)
        series = {name: {'x': points['step'], 'y': points['value']} for name, points in down['series'].items()}
        series.update(system_series(self.system))
        return {'series': series, 'epochs': self.epochs, 'spans': self.spans(), 'timeline': self.timeline()}

    def spans(self) -> list[dict]: return fit_spans(self.epochs, self.last)

    def timeline(self) -> Timeline: return timeline(self.run, self.epochs, self.times, self.last)

    def _times(self, epochs: list[EpochRow]) -> dict[int, float]:
        "The times of the first and last batch of each of `epochs` (the run's, or the next ones)."
        if not epochs: return {}
        before = [e for e in self.epochs if e.epoch < epochs[0].epoch]
        bounds = epoch_bounds([*before[-1:], *epochs])[len(before[-1:]):]
        return self.store.batch_times(self.run_id, {step for bound in bounds for step in bound})

    def metric_names(self) -> list[str]:
        "The run's metrics: those it logged, in the Recorder's order (`metric_order`)."
        return metric_order(self.run.info.metric_names, self.epochs)

    def poll(self) -> RunUpdate:
        "What is new since the last snapshot or poll (`RunUpdate.new` says whether anything is)."
        before, self.run = self.run, self.store.run(self.run_id)
        update = RunUpdate(self.run, changed=(self.run.state, self.run.updated_at) != (before.state, before.updated_at))
        batches = self.store.batches(self.run_id, since=self.cursor)
        if len(batches['step']) > self.max_points:
            update.reload = True
            return update
        if batches['step']:
            self.cursor = batches['step'][-1]
            self.last = BatchRow(self.run_id, *(values[-1] for values in batches.values()))
            update.batches = batches
        update.epochs = self.store.epochs(self.run_id, since=self.epochs[-1].epoch if self.epochs else None)
        update.alerts = self.store.alerts(self.run_id, since=self.alerts[-1].seq if self.alerts else None)
        update.system = self.store.rows(system, self.run_id, since=self.system[-1].seq if self.system else None)
        self.times.update(self._times(update.epochs))
        self.epochs += update.epochs
        self.alerts += update.alerts
        self.system += update.system
        update.timeline = self.timeline()
        return update


@dataclass
class ItemsRead:
    "What the Items panel shows of a split: its data map, its thumbnails, the run's decisions and classes."
    split: str
    found: DataMap | None
    images: dict[int, tuple]  # thumbnails by item index (`dynamics.thumbnails`)
    decided: dict[tuple[str, str], DecisionRow]
    vocab: list[str]

    def label(self, c: int) -> str: return class_label(self.vocab, c)


class ItemsFeed:
    """The items of one split of a run: `read()` reads the rows recorded since the last read, one query a table, and
    gives the split's data map, thumbnails and decisions from what it holds: the data map so far (each item values
    row folded in once, `DataMapBuilder`), every decision row read, and the latest thumbnail of each item."""

    def __init__(self, store: Store, run_id: str, split: str):
        self.store, self.run_id, self.split = store, run_id, split
        self.tables: dict[RunTable, dict] = {items: {'split': split}, item_epochs: {'split': split},
                                             item_images: {'split': split}, decisions: {}}
        if split == 'valid': self.tables[top_losses] = {}  # the valid split's top losses have thumbnails too
        self.cursors: dict[RunTable, object] = {}
        self.rows: dict[RunTable, list] = {items: [], decisions: []}
        self.data_map = DataMapBuilder(split)
        self.images: dict[RunTable, dict[int, tuple]] = {item_images: {}, top_losses: {}}  # by item index
        self.vocab: list[str] = []

    def read(self) -> ItemsRead:
        "Read what was recorded since the last read; what the split shows now."
        for table, equal in self.tables.items():
            new = self.store.rows(table, self.run_id, since=self.cursors.get(table), **equal)
            if not new: continue
            self.cursors[table] = getattr(new[-1], table.cursor)
            if table is item_epochs:
                for row in new: self.data_map.add(row)
            elif table in self.images: self.images[table].update((row.item_index, row) for row in new)
            else: self.rows[table] += new
        if not self.vocab: self.vocab = [str(v) for v in self.store.run(self.run_id).vocab or []]
        names = self.rows[items]
        return ItemsRead(self.split, self.data_map.build(names[0] if names else None),
                         thumbnails(self.images[item_images].values(), self.images[top_losses].values()),
                         current(self.rows[decisions]), self.vocab)


class RunsFeed:
    """The store's runs, newest first, each with its summary (`runs_table.RunSummary`), kept current: `poll()` reads
    them again when one cheap query says something changed (a run added, a record updated), or while a run may still
    change (a live run's state also changes when its heartbeat stops); it summarises again only the runs whose
    record changed. `summarised` False: the runs' records alone, for a view with no runs table."""

    def __init__(self, store: Store, summarised: bool = True):
        self.store, self.summarised = store, summarised
        self.version = store.runs_version()
        self.summaries: list[RunSummary] = self._summaries(store.runs())

    def _summaries(self, runs: list[RunRecord]) -> list[RunSummary]:
        return run_summaries(self.store, runs) if self.summarised else [RunSummary(run) for run in runs]

    @property
    def runs(self) -> list[RunRecord]: return [summary.run for summary in self.summaries]

    def poll(self) -> tuple[bool, bool]:
        """Read the runs again if they may have changed: (whether the list changed: a run added or gone, renamed,
        in another state; whether any run's summary changed)."""
        version = self.store.runs_version()
        if version == self.version and not any(run.state in FOLLOWED_STATES for run in self.runs): return False, False
        runs, self.version = self.store.runs(), version
        before = {summary.run.id: summary for summary in self.summaries}
        changed = [run for run in runs if run.id not in before or _seen(run) != _seen(before[run.id].run)]
        fresh = {summary.run.id: summary for summary in self._summaries(changed)}
        listed = [(r.id, r.state, r.name) for r in runs] != [(r.id, r.state, r.name) for r in self.runs]
        self.summaries = [fresh.get(run.id) or before[run.id] for run in runs]
        return listed, bool(fresh) or listed


def _seen(run: RunRecord) -> tuple:
    "What of a run's record says that its summary may have changed."
    return run.state, run.updated_at, run.name
