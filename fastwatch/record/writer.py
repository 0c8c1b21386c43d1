"""The background writer: the training thread hands it rows in O(1); a thread writes them to the store in batches.

Monitoring must never break or slow training, so a store that fails (unwritable, locked, disk full, server down)
costs one warning: rows of every run table stay buffered (up to the table's bound, `store.tables`, the oldest
dropped first and counted in the run's `lost_rows`) and are retried with backoff, and once more for up to
`EXIT_WAIT` s at process exit. The writer does no network work of its own: listeners (publishing, alerts) see what
each commit wrote, in this thread, and do their network work on threads of their own (`network.py`).
"""
from __future__ import annotations

import atexit
import sys
import threading
import time
import warnings
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Protocol

import torch
from sqlalchemy import event

from ..store import HEARTBEAT_SECONDS, RunRecord, Store, display_location, hide_password, open_store, store_url
from ..store.store import RUNS, unavailable
from ..store.tables import RUN_TABLES, BatchRow, batches

EXIT_WAIT = 10.0  # seconds the process's exit waits for the last rows to be written, even to a failing store
FLUSH_EVERY = 0.5  # seconds between writes: at most what a killed process loses
# Retries of a failing store back off from 1 s to this: a store that comes back gets its rows within seconds.
MAX_RETRY_SECONDS = 4.0
# How long a write waits for another process's lock on a SQLite store before it counts as failing: a writer thread
# held in SQLite's busy handler could not bound its buffer meanwhile.
SQLITE_LOCK_WAIT_MS = 2000

# A probe is asked each tick whether an open run ended without telling: it returns None or (status, error).
Probe = Callable[[], 'tuple[str, str | None] | None']


class Listener(Protocol):
    "What the writer tells of each commit: `committed` runs in the writer's thread, so it must not wait on anything."
    done: bool

    def committed(self, rows: dict[str, list], updates: dict[str, dict]) -> None: ...
    def finish(self, timeout: float) -> bool: ...


def _number(value) -> float | None:
    "A float from a Python number or a one-element tensor (converted here, off the training thread)."
    if value is None or type(value) is float: return value
    with torch._C.DisableTorchFunctionSubclass(): return float(value)  # fastai's tensor subclasses read slowly


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

    def __init__(self, url: str, flush_every: float = FLUSH_EVERY):
        "While the store fails, at most `bounds[table]` rows of each table are kept (default: the table's bound)."
        self.url, self.flush_every = url, flush_every
        self.bounds = {name: entry.bound for name, entry in RUN_TABLES.items()}
        self.location = display_location(url)
        # Appended by training threads, drained by the writer thread: batch rows as they are, everything else as a
        # list [kind, ...].
        self._queue: deque = deque()
        self._wake = threading.Event()
        self._open: dict[str, Probe | None] = {}  # runs being recorded, with their probes
        # Writer-thread state only:
        self._store = None
        self._rows: dict[str, list] = defaultdict(list)
        self._updates: dict[str, dict] = defaultdict(dict)
        self._markers: list[tuple[threading.Event, bool]] = []  # (marker, whether it waits through failures)
        self._lost: dict[str, int] = defaultdict(int)
        self._refused_runs: set[str] = set()  # runs whose refused rows were already warned about
        self._failures, self._retry_at, self._last_beat = 0, 0.0, 0.0
        self.failing, self._failed_at = False, 0.0
        self.listeners: list[Listener] = []  # told of each commit; dropped once `done`
        self._thread = threading.Thread(target=self._loop, name='fastwatch-writer', daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    # --- the training thread's API: each call only appends to a queue -------------------------------------
    def start_run(self, record: RunRecord, probe: Probe | None = None) -> None:
        "Insert a new run's record and keep its heartbeat going until `end_run`."
        self._open[record.id] = probe
        self._queue.append(['rows', RUNS, [record]])

    def update_run(self, run_id: str, **fields) -> None:
        "Change fields of a run's record."
        self._queue.append(['update', run_id, fields])

    def add_batch(self, row: BatchRow) -> None:
        "One training batch; its tensors become floats in the writer thread."
        self._queue.append(row)  # as it is: the per-batch path allocates nothing more

    def add_rows(self, table: str, rows: list) -> None:
        "Rows of a run table (`store.tables.RUN_TABLES`), each its table's `Row`."
        entry = RUN_TABLES.get(table)
        if entry is None: raise KeyError(f'no run table {table!r}: see fastwatch.store.tables')
        if rows and type(rows[0]) is not entry.Row:
            raise TypeError(f'rows of {table} are {entry.Row.__name__}s, not {type(rows[0]).__name__}s')
        self._queue.append(['rows', table, rows])

    def add_later(self, make_rows: Callable[[], dict[str, list]]) -> None:
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
                for listener in [listener for listener in self.listeners if listener.done]:
                    self.listeners.remove(listener)  # in place: training threads append
            except Exception as e:  # a bug here must not end the thread that keeps the buffer
                warnings.warn(f'fastwatch: writer error: {type(e).__name__}: {e}', RuntimeWarning)

    def _drain(self) -> None:
        while self._queue:
            item = self._queue.popleft()
            if type(item) is BatchRow:  # the per-batch path: positional, kept short
                run_id, step, epoch, fit, frozen, loss, smooth_loss, lr, mom, wall, lrs = item
                if not (type(loss) is type(smooth_loss) is type(lr) is type(mom) is float and lrs is None):
                    item = BatchRow(run_id, step, epoch, fit, frozen, _number(loss), _number(smooth_loss), _number(lr),
                                    _number(mom), wall, None if lrs is None else [_number(v) for v in lrs])
                self._rows[batches.name].append(item)
                continue
            kind, *args = item
            if kind == 'rows': self._rows[args[0]].extend(args[1])
            elif kind == 'update': self._updates[args[0]].update(args[1])
            elif kind == 'marker': self._markers.append(tuple(args))
            elif kind == 'later': self._take_later(args[0])
            elif kind == 'end': self._take_end(*args)

    def _take_later(self, make_rows: Callable) -> None:
        try: rows = make_rows()
        except Exception as e:
            warnings.warn(f'fastwatch: could not prepare rows: {type(e).__name__}: {e}', RuntimeWarning)
            return
        for table, table_rows in rows.items(): self._rows[table].extend(table_rows)

    def _take_end(self, run_id: str, status: str, error: str | None) -> None:
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
            if table == RUNS: continue  # one per run, and the other rows refer to it
            excess = len(rows) - self.bounds[table]
            if excess <= 0: continue
            for row in rows[:excess]: self._lost[row.run_id] += 1
            del rows[:excess]

    def _open_store(self) -> Store:
        store = open_store(self.url)
        if store.engine.dialect.name == 'sqlite':
            event.listen(store.engine, 'connect',
                         lambda conn, _: conn.execute(f'PRAGMA busy_timeout={SQLITE_LOCK_WAIT_MS}'))
            store.engine.dispose()  # so that every connection the writer uses has it
        return store

    def _write(self) -> None:
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
            self._tell(*written)
        for marker, _ in self._markers: marker.set()
        self._markers = []

    def _tell(self, rows: dict, updates: dict) -> None:
        "Tell each listener what was written; a failing listener is a warning, never a lost write."
        for listener in list(self.listeners):
            try: listener.committed(rows, updates)
            except Exception as e:
                warnings.warn(f'fastwatch: {type(listener).__name__} failed: {type(e).__name__}: {e}',
                              RuntimeWarning)

    def _write_rows(self) -> None:
        """Write this tick's rows in one transaction. If the database refuses it and the store itself is fine, write
        them one by one instead: a row refused alone is dropped and counted in its run's `lost_rows`."""
        try: return self._store.write(self._rows, self._updates)
        except Exception as e:
            if unavailable(e): raise
        refused = defaultdict(int)  # run id -> rows refused now
        for table, run_id, error in self._store.write_apart(self._rows, self._updates):
            self._lost[run_id] += 1
            refused[run_id] += 1
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
        """Close runs still open when the interpreter exits (an uncaught exception, Ctrl-C), write what is left, let
        the listeners finish their network work (a last upload, the last alerts) and write what that adds: all
        within `EXIT_WAIT` s."""
        deadline = time.monotonic() + EXIT_WAIT
        left = lambda: max(0.0, deadline - time.monotonic())
        status, error = exit_outcome(getattr(sys, 'last_value', None),
                                     unknown=('interrupted', 'the process exited before the fit ended'))
        for run_id in list(self._open): self.end_run(run_id, status, error)
        written = self.flush(timeout=left(), through_failures=True)
        if written and self.listeners:
            for listener in list(self.listeners): listener.finish(left())
            written = self.flush(timeout=left(), through_failures=True)
        if not written and self.failing:
            remaining = sum(map(len, list(self._rows.values()))) + len(self._queue)
            warnings.warn(f'fastwatch: the store {self.location} still fails at exit: {remaining} rows were not '
                          'written', RuntimeWarning)
