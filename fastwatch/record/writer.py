"""The background writer: the training thread hands it rows in O(1); a thread writes them to the store in batches.

Monitoring must never break or slow training, so a store that fails (unwritable, locked, disk full, server down)
costs one warning: rows of every kind stay buffered (up to a bound per table, the oldest dropped first and counted
in the run's `lost_rows`) and are retried with backoff, and once more for up to `EXIT_WAIT` s at process exit.
"""
from __future__ import annotations

import atexit
import json
import sys
import threading
import time
import warnings
from collections import defaultdict, deque
from collections.abc import Callable

import numpy as np
import torch
from sqlalchemy import event

from ..store import HEARTBEAT_SECONDS, Store, display_location, hide_password, open_store, schema, store_url
from ..store.downsample import summarise
from ..store.store import unavailable

EXIT_WAIT = 10.0  # seconds the process's exit waits for the last rows to be written, even to a failing store
# Retries of a failing store back off from 1 s to this: a store that comes back gets its rows within seconds.
MAX_RETRY_SECONDS = 4.0
# How long a write waits for another process's lock on a SQLite store before it counts as failing: a writer thread
# held in SQLite's busy handler could not bound its buffer meanwhile.
SQLITE_LOCK_WAIT_MS = 2000

# A probe is asked each tick whether an open run ended without telling: it returns None or (status, error).
Probe = Callable[[], 'tuple[str, str | None] | None']


def _number(value) -> float | None:
    "A float from a Python number or a one-element tensor (converted here, off the training thread)."
    if value is None or type(value) is float: return value
    with torch._C.DisableTorchFunctionSubclass(): return float(value)  # a fastai tensor subclass reads 10x slower


def exit_outcome(exc: BaseException | None, unknown: tuple[str, str]) -> tuple[str, str]:
    "The status and error of a run still open when its fit stopped with `exc`, or `unknown` when not known."
    if exc is None: return unknown
    if isinstance(exc, KeyboardInterrupt): return 'interrupted', 'KeyboardInterrupt'
    return 'failed', ' '.join(f'{type(exc).__name__}: {exc}'.split())[:500]


class Writer:
    "One background writer per store and process; get it with `Writer.for_store(location)`."
    _writers: dict[str, Writer] = {}
    _lock = threading.Lock()

    @classmethod
    def for_store(cls, location=None) -> Writer:
        "The process's writer for the store at `location` (a path or SQLAlchemy URL), started on first use."
        url = store_url(location)
        with cls._lock:
            writer = cls._writers.get(url)
            if writer is None or not writer._thread.is_alive(): writer = cls._writers[url] = cls(url)
        return writer

    def __init__(self, url: str, flush_every: float = 0.5, max_buffered: int = 1_000_000,
                 max_buffered_items: int = 10_000):
        "While the store fails, at most `max_buffered` rows of each table are kept, `max_buffered_items` top losses."
        self.url, self.flush_every = url, flush_every
        self.max_buffered, self.max_buffered_items = max_buffered, max_buffered_items
        self.location = display_location(url)
        # Appended by training threads, drained by the writer thread: batch rows as bare tuples, everything
        # else as a list [kind, ...].
        self._queue: deque = deque()
        self._wake = threading.Event()
        self._open: dict[str, Probe | None] = {}  # runs being recorded, with their probes
        # Writer-thread state only:
        self._store = None
        self._rows: dict[str, list] = defaultdict(list)
        self._updates: dict[str, dict] = defaultdict(dict)
        self._markers: list[tuple[threading.Event, bool]] = []  # (marker, whether it waits through failures)
        self._blocks: dict[str, dict] = {}  # run id -> {level: (open block, its points, their last steps)}
        self._lost: dict[str, int] = defaultdict(int)
        self._refused_runs: set[str] = set()  # runs whose refused rows were already warned about
        self._failures, self._retry_at, self._last_beat = 0, 0.0, 0.0
        self.failing, self._failed_at = False, 0.0
        # Objects with `before_write(rows, updates)` (alerts: may add rows to the write) and/or
        # `after_write(rows, updates)` (publishing), called in this thread on each tick the store works; one whose
        # `done` is true is dropped.
        self.hooks: list = []
        self._thread = threading.Thread(target=self._loop, name='fastwatch-writer', daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    # --- the training thread's API: each call only appends to a queue -------------------------------------
    def start_run(self, run: dict, probe: Probe | None = None) -> None:
        "Insert a new run's row and keep its heartbeat going until `end_run`."
        self._open[run['id']] = probe
        self._queue.append(['rows', 'runs', [run]])

    def update_run(self, run_id: str, **fields) -> None:
        "Change fields of a run's row."
        self._queue.append(['update', run_id, fields])

    def add_batch(self, row: tuple) -> None:
        "One training batch, a tuple in the batches table's column order; tensors become floats in the thread."
        self._queue.append(row)  # a bare tuple: the per-batch path allocates nothing more

    def add_rows(self, table: str, rows: list[dict]) -> None:
        "Rows of another table (epochs, confusion, top_losses)."
        self._queue.append(['rows', table, rows])

    def add_later(self, make_rows: Callable[[], dict[str, list[dict]]]) -> None:
        "Rows that are costly to make (thumbnails): `make_rows()` runs in the writer thread."
        self._queue.append(['later', make_rows])

    def end_run(self, run_id: str, status: str, error: str | None = None) -> None:
        "Close a run with its final status; its heartbeat stops."
        if self._open.pop(run_id, 'closed') != 'closed':
            self._queue.append(['end', run_id, status, error])

    def flush(self, timeout: float = 10.0, through_failures: bool = False) -> bool:
        """Ask for everything queued so far to be written and wait at most `timeout` s: True once it is. While the
        store fails this returns at once, unless `through_failures`: then the writer retries on every tick."""
        marker = threading.Event()
        self._queue.append(['marker', marker, through_failures])
        self._wake.set()
        return (through_failures or not self.failing) and marker.wait(timeout)

    # --- the writer thread --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_every)
            self._wake.clear()
            try:
                self._drain()
                self._beat()
                if self.failing: self._bound_buffer()
                if time.monotonic() >= self._retry_at or any(insist for _, insist in self._markers): self._write()
            except Exception as e:  # a bug here must not end the thread that keeps the buffer
                warnings.warn(f'fastwatch: writer error: {type(e).__name__}: {e}', RuntimeWarning)

    def _drain(self) -> None:
        while self._queue:
            item = self._queue.popleft()
            if type(item) is tuple:
                self._take_batch(item)
                continue
            kind, *args = item
            if kind == 'rows': self._rows[args[0]].extend(args[1])
            elif kind == 'update': self._updates[args[0]].update(args[1])
            elif kind == 'marker': self._markers.append(tuple(args))
            elif kind == 'later': self._take_later(args[0])
            elif kind == 'end': self._take_end(*args)

    def _take_batch(self, values: tuple) -> None:
        run_id, step, epoch, fit, frozen, loss, smooth_loss, lr, mom, wall, lrs = values
        row = (run_id, step, epoch, fit, frozen, _number(loss), _number(smooth_loss), _number(lr), _number(mom), wall,
               None if lrs is None else json.dumps([_number(v) for v in lrs]))
        self._rows['batches'].append(row)
        block, current = step // schema.BLOCK_STEPS, self._blocks.get(run_id, {}).get(0)
        if current is not None and current[0] == block:  # the common case, kept short: one row per batch
            current[1].append(row)
            current[2].append(step)
        else: self._add_to_block(run_id, 0, block, row, step)

    def _add_to_block(self, run_id: str, level: int, block: int, point, last_step: int) -> None:
        "Add a batch row (level 0) or a closed block's summary (the levels above) to the open block of its level."
        levels = self._blocks.setdefault(run_id, {})
        current = levels.get(level)
        if current is not None and current[0] != block:
            self._close_block(run_id, level)
            current = None
        if current is None: current = levels[level] = (block, [], [])
        current[1].append(point)
        current[2].append(last_step)

    def _close_block(self, run_id: str, level: int) -> None:
        "Write the summary of a level's open block, and pass it on to the level above."
        block, points, last_steps = self._blocks[run_id].pop(level)
        if level == 0:  # batch rows: each value is its own min and max
            values = np.array([row[5:9] for row in points], dtype=float)  # None -> NaN
            steps = np.broadcast_to(np.array(last_steps, dtype=float)[:, None], values.shape)
            summary = summarise(values, steps, values, steps)
        else:
            points = np.stack(points)  # (blocks, series, 4)
            summary = summarise(points[:, :, 0], points[:, :, 1], points[:, :, 2], points[:, :, 3])
        row = {'run_id': run_id, 'level': level, 'block': block, 'last_step': last_steps[-1]}
        for name, values in zip(schema.SUMMARISED, summary):
            row.update({f'{name}_{field}': None if np.isnan(v) else (int(v) if field.endswith('step') else float(v))
                        for field, v in zip(schema.SUMMARY_FIELDS, values)})
        self._rows['batch_blocks'].append(row)
        if level + 1 < schema.BLOCK_LEVELS:
            self._add_to_block(run_id, level + 1, block // schema.BLOCK_FANOUT, summary, last_steps[-1])

    def _close_blocks(self, run_id: str) -> None:
        for level in range(schema.BLOCK_LEVELS):
            if level in self._blocks.get(run_id, {}): self._close_block(run_id, level)
        self._blocks.pop(run_id, None)

    def _take_later(self, make_rows: Callable) -> None:
        try: rows = make_rows()
        except Exception as e:
            warnings.warn(f'fastwatch: could not prepare rows: {type(e).__name__}: {e}', RuntimeWarning)
            return
        for table, table_rows in rows.items(): self._rows[table].extend(table_rows)

    def _take_end(self, run_id: str, status: str, error: str | None) -> None:
        self._close_blocks(run_id)
        now = time.time()
        self._updates[run_id].update(status=status, error=error, updated_at=now, heartbeat=now)

    def _beat(self) -> None:
        "Mark open runs alive, and close those whose probe says their fit ended without telling."
        for run_id, probe in list(self._open.items()):
            outcome = probe() if probe else None
            if outcome: self.end_run(run_id, *outcome)
        now = time.time()
        if now - self._last_beat < HEARTBEAT_SECONDS: return
        self._last_beat = now
        for run_id in list(self._open): self._updates[run_id].update(heartbeat=now, updated_at=now)
        self._drain()

    def _bound_buffer(self) -> None:
        "While the store fails, keep the newest rows of each table up to its bound; count the others as lost."
        for table, rows in self._rows.items():
            if table == 'runs': continue  # one per run, and the other rows refer to it
            excess = len(rows) - (self.max_buffered_items if table == 'top_losses' else self.max_buffered)
            if excess <= 0: continue
            for row in rows[:excess]: self._lost[row[0] if type(row) is tuple else row['run_id']] += 1
            del rows[:excess]

    def _open_store(self) -> Store:
        store = open_store(self.url)
        if store.engine.dialect.name == 'sqlite':
            event.listen(store.engine, 'connect',
                         lambda conn, _: conn.execute(f'PRAGMA busy_timeout={SQLITE_LOCK_WAIT_MS}'))
            store.engine.dispose()  # so that every connection the writer uses has it
        return store

    def _write(self) -> None:
        self._call_hooks('before_write', self._rows, self._updates)
        written: tuple[dict, dict] = ({}, {})
        if self._rows or self._updates:
            for run_id, lost in self._lost.items(): self._updates[run_id]['lost_rows'] = lost
            try:
                if self._store is None: self._store = self._open_store()
                self._write_rows()
            except Exception as e:
                self._fail(e)
                return
            self._recover()
            written = self._rows, self._updates
            self._rows, self._updates = defaultdict(list), defaultdict(dict)
        self._call_hooks('after_write', *written)
        for marker, _ in self._markers: marker.set()
        self._markers = []

    def _call_hooks(self, method: str, rows: dict, updates: dict) -> None:
        "Let each hook see this tick's rows; a failing hook is a warning, never a lost write."
        for hook in list(self.hooks):
            try: getattr(hook, method, lambda *_: None)(rows, updates)
            except Exception as e:
                warnings.warn(f'fastwatch: {type(hook).__name__} failed: {type(e).__name__}: {e}', RuntimeWarning)
            if getattr(hook, 'done', False): self.hooks.remove(hook)  # in place: training threads append

    def _write_rows(self) -> None:
        """Write this tick's rows in one transaction. If the database refuses it and the store itself is fine, write
        them one by one instead: a row refused alone is dropped and counted in its run's `lost_rows`."""
        try: return self._store.write(self._rows, self._updates)
        except Exception as e:
            if unavailable(e): raise
        refused = {}  # run id -> rows refused now
        for table, row, error in self._store.write_apart(self._rows, self._updates):
            run_id = row[0] if type(row) is tuple else row.get('run_id', row.get('id'))
            self._lost[run_id] += 1
            refused[run_id] = refused.get(run_id, 0) + 1
            if run_id in self._refused_runs: continue
            self._refused_runs.add(run_id)
            message = getattr(error, 'orig', None) or error  # the database's own message, without SQLAlchemy's SQL
            cause = hide_password(' '.join(f'{type(error).__name__}: {message}'.split())[:300], self.url)
            warnings.warn(f'fastwatch: the store {self.location} refused a row of {table} for run {run_id} ({cause}); '
                          "it is dropped and counted in the run's lost_rows, as is any other row it refuses. "
                          'Recording goes on.', RuntimeWarning)
        if refused: self._store.write({}, {run_id: {'lost_rows': self._lost[run_id]} for run_id in refused})

    def _fail(self, error: Exception) -> None:
        self._failures += 1
        self._retry_at = time.monotonic() + min(MAX_RETRY_SECONDS, 0.5 * 2 ** self._failures)
        if not self.failing:
            self.failing, self._failed_at = True, time.time()
            cause = hide_password(str(error).splitlines()[0] if str(error) else type(error).__name__, self.url)
            # The time makes each outage's warning new to Python's filter, which shows a repeated one only once.
            warnings.warn(f'fastwatch: cannot write to the store {self.location} (at {time.strftime("%H:%M:%S")}): '
                          f'{cause}. Training goes on; rows are kept in memory and retried.', RuntimeWarning)
        for marker, insist in self._markers:  # only a flush through failures waits on a failing store
            if not insist: marker.set()
        self._markers = [(marker, insist) for marker, insist in self._markers if insist]

    def _recover(self) -> None:
        if self.failing:
            lost = sum(self._lost.values())
            warnings.warn(f'fastwatch: the store {self.location} is writable again after '
                          f'{time.time() - self._failed_at:.1f} s'
                          + (f'; {lost} rows were lost' if lost else '; nothing was lost'), RuntimeWarning)
        self.failing, self._failures = False, 0

    def _at_exit(self) -> None:
        "Close runs still open when the interpreter exits (an uncaught exception, Ctrl-C) and write what is left."
        status, error = exit_outcome(getattr(sys, 'last_value', None),
                                     unknown=('interrupted', 'the process exited before the fit ended'))
        for run_id in list(self._open): self.end_run(run_id, status, error)
        if not self.flush(timeout=EXIT_WAIT, through_failures=True) and self.failing:
            left = sum(map(len, list(self._rows.values()))) + len(self._queue)
            warnings.warn(f'fastwatch: the store {self.location} still fails at exit: {left} rows were not written',
                          RuntimeWarning)
