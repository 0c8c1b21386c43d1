"""The store: where runs live (one SQLite file by default, or any SQLAlchemy URL such as PostgreSQL).

Its public methods are the read API that the dashboard and the CLI use; `write` is what the background writer
calls. Nothing here imports torch or fastai.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import numpy as np
from sqlalchemy import create_engine, event, exc, func, make_url, select
from sqlalchemy.engine import Engine

from ..errors import RunNotFound, StoreError
from . import schema
from .confusion import dense, unpack_cells
from .downsample import minmax_buckets
from .location import display_location, sqlite_path, store_url
from .schema import batch_blocks, batches, confusion, epochs, runs, top_losses

HEARTBEAT_SECONDS = 2.0  # how often a recording process marks its open runs as alive
STALE_AFTER = 20.0  # a `running` run whose heartbeat is older than this is reported as interrupted
# Seconds a PostgreSQL server may take to answer a new connection: one that accepts and never answers then fails
# like one that refuses, instead of holding the writer (or a dashboard's kernel) for ever.
CONNECT_TIMEOUT = 5
DENSE_CLASSES = 100  # up to this many classes, `confusion` also gives the dense matrix
BATCH_COLUMNS = ('step', 'epoch', 'fit', 'frozen', 'loss', 'smooth_loss', 'lr', 'mom', 'time', 'lrs')


def _sqlite_engine(url: str, readonly: bool) -> Engine:
    path = sqlite_path(url)
    if readonly:
        if not path.is_file(): raise StoreError(f'no fastwatch store at {path}')
        url = f'sqlite:///file:{path}?mode=ro&uri=true'
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={'timeout': 30})

    if not readonly:
        @event.listens_for(engine, 'connect')
        def _synchronous(dbapi_conn, _):
            dbapi_conn.execute('PRAGMA synchronous=NORMAL')  # safe with WAL, and much faster than FULL
    return engine


def _server_engine(url: str, readonly: bool) -> Engine:
    timeout = {'connect_timeout': CONNECT_TIMEOUT} if url.startswith('postgresql') \
        and 'connect_timeout' not in make_url(url).query else {}  # a URL's own ?connect_timeout= is kept
    engine = create_engine(url, pool_pre_ping=True, connect_args=timeout)
    if readonly:
        @event.listens_for(engine, 'connect')
        def _readonly(dbapi_conn, _):
            cursor = dbapi_conn.cursor()
            cursor.execute('SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY')
            cursor.close()
            dbapi_conn.commit()
    return engine


def open_store(location: str | os.PathLike | None = None, readonly: bool = False) -> Store:
    """Open the store at a path or SQLAlchemy URL (default: `$FASTWATCH_STORE`, then `./fastwatch.db`).
    A writable store is created on first use; a read-only one must exist and be a fastwatch store."""
    url = store_url(location)
    where = display_location(url)
    try:
        engine = _sqlite_engine(url, readonly) if url.startswith('sqlite') else _server_engine(url, readonly)
        with engine.begin() as conn: schema.ensure_schema(conn, where, create=not readonly)
        if url.startswith('sqlite') and not readonly:
            # WAL (kept in the file): readers never block the writer, and several processes can record at once.
            with engine.connect() as conn: conn.exec_driver_sql('PRAGMA journal_mode=WAL')
    except StoreError: raise
    except Exception as e:
        raise StoreError(f'cannot open store {where}: {str(e).splitlines()[0]}') from e
    store = Store(engine, where)
    if readonly:  # a reader of a damaged file gets one line, never the database's traceback
        @event.listens_for(engine, 'handle_error')
        def _unreadable(context):
            reason = (str(context.original_exception).splitlines() or ['unreadable'])[0]
            raise StoreError(f'cannot read store {store.location}: {reason}')
    return store


def unavailable(error: BaseException) -> bool:
    "Whether a failed write is the store's failure (unreachable, locked, full, read-only) rather than a row's."
    return isinstance(error, (exc.OperationalError, exc.InterfaceError, exc.InternalError, exc.DisconnectionError,
                              exc.TimeoutError, OSError))


def _loads(text: str | None) -> Any: return None if text is None else json.loads(text)


def _run_dict(row, now: float) -> dict:
    run = dict(row._mapping)
    for key in ('info', 'config', 'vocab'): run[key] = _loads(run[key])
    stale = run['status'] == 'running' and now - run['heartbeat'] > STALE_AFTER
    run['state'] = 'live' if run['status'] == 'running' and not stale else (
        'interrupted' if stale else run['status'])
    return run


def _columns(rows, names) -> dict[str, list]:
    rows = list(rows)
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def _batch_columns(rows) -> dict[str, list]:
    "Batch rows as columns, `lrs` (every parameter group's lr, None with one group) decoded."
    columns = _columns(rows, BATCH_COLUMNS)
    columns['lrs'] = [_loads(lrs) for lrs in columns['lrs']]
    return columns


def _not_finite_as_nan(value: float | None) -> float:
    "A value that is always recorded, read back: SQLite stores NaN as NULL."
    return math.nan if value is None else value


class Store:
    "A fastwatch store: runs, their per-batch and per-epoch series, confusion matrices and top losses."

    def __init__(self, engine: Engine, location: str):
        self.engine, self.location = engine, location

    def __repr__(self): return f'Store({self.location!r})'

    def close(self) -> None:
        "Release the store's connections."
        self.engine.dispose()

    def _all(self, query) -> list:
        with self.engine.connect() as conn: return list(conn.execute(query))

    # --- read API --------------------------------------------------------------------------------------
    def runs(self) -> list[dict]:
        "Every run, newest first, each with its derived `state`: live / finished / failed / interrupted."
        now = time.time()
        return [_run_dict(row, now) for row in self._all(select(runs).order_by(runs.c.created_at.desc()))]

    def run(self, run_id: str) -> dict:
        "One run's record; `RunNotFound` names the runs there are when there is no such run."
        rows = self._all(select(runs).where(runs.c.id == run_id))
        if not rows:
            known = [r[0] for r in self._all(select(runs.c.id).order_by(runs.c.created_at.desc()).limit(10))]
            raise RunNotFound(f"no run {run_id!r} in {self.location}; "
                              + (f"runs: {', '.join(known)}" if known else 'it has no runs yet'))
        return _run_dict(rows[0], time.time())

    def counts(self, run_id: str) -> dict[str, int]:
        "How many rows of each kind the run has recorded."
        self.run(run_id)
        return {table.name: self._all(select(func.count()).select_from(table).where(table.c.run_id == run_id))[0][0]
                for table in (batches, epochs, confusion, top_losses)}

    def batches(self, run_id: str, since: int | None = None) -> dict[str, list]:
        """Columns of the batch rows after step `since` (all when None): pass the last `step` back as the cursor.
        `lr` and `mom` are the last parameter group's; `lrs` every group's lr (None where there is one group)."""
        query = select(*[batches.c[name] for name in BATCH_COLUMNS]).where(batches.c.run_id == run_id)
        if since is not None: query = query.where(batches.c.step > since)
        return _batch_columns(self._all(query.order_by(batches.c.step)))

    def last_batch(self, run_id: str) -> dict | None:
        "The run's latest batch row, or None before its first."
        query = (select(*[batches.c[name] for name in BATCH_COLUMNS]).where(batches.c.run_id == run_id)
                 .order_by(batches.c.step.desc()).limit(1))
        columns = _batch_columns(self._all(query))
        return {name: values[0] for name, values in columns.items()} if columns['step'] else None

    def batches_downsampled(self, run_id: str, n: int = 2000) -> dict:
        """At most about `n` points for each of loss, smooth_loss, lr and mom, keeping each range's min and max
        and the last point: `{'cursor': last step, 'series': {name: {'step': [...], 'value': [...]}}}`.
        Pass `cursor` to `batches(since=...)` to follow the run from there."""
        with self.engine.connect() as conn:
            last = conn.execute(select(func.max(batches.c.step)).where(batches.c.run_id == run_id)).scalar()
            # Long runs read the coarsest block summaries that are no wider than a bucket; short ones read rows.
            span = 0 if last is None else (last + 1) / max(1, n // 2)
            level = max((level for level in range(schema.BLOCK_LEVELS)
                         if schema.BLOCK_STEPS * schema.BLOCK_FANOUT ** level <= span), default=None)
            summary = [c for c in batch_blocks.c if c.name not in ('run_id', 'level', 'block')]
            query = (select(*summary).where(batch_blocks.c.run_id == run_id, batch_blocks.c.level == level)
                     .order_by(batch_blocks.c.block))
            rows = [tuple(row) for row in conn.execute(query)] if level is not None else []
            blocks = np.array(rows, dtype=float).reshape(-1, len(summary))  # None -> NaN
        block = {c.name: blocks[:, i] for i, c in enumerate(summary)}
        covered = int(block['last_step'][-1]) if len(blocks) else -1
        tail = self.batches(run_id, since=covered)
        if not len(blocks) and len(tail['step']) <= n:
            return {'cursor': last,
                    'series': {name: {'step': tail['step'], 'value': tail[name]} for name in schema.SUMMARISED}}
        series = {}
        for name in schema.SUMMARISED:
            both = lambda key, rows, name=name: np.concatenate([block[f'{name}_{key}'], np.array(rows, dtype=float)])
            steps, values = minmax_buckets(both('min_step', tail['step']), both('min', tail[name]),
                                           both('max_step', tail['step']), both('max', tail[name]), n)
            series[name] = {'step': steps.tolist(), 'value': values.tolist()}
        if not tail['step']:  # the last point lies inside the last block: add it
            last_row = self.last_batch(run_id)
            for name, points in series.items():
                value = last_row[name]
                if value is not None and (not points['step'] or points['step'][-1] != last):
                    points['step'].append(last); points['value'].append(value)
        return {'cursor': last, 'series': series}

    def epochs(self, run_id: str) -> list[dict]:
        """One dict per finished epoch: epoch, fit, frozen, step, train_loss, valid_loss, metrics, duration, time.
        The losses are NaN where they were not finite (or where no validation pass gave one)."""
        rows = self._all(select(epochs).where(epochs.c.run_id == run_id).order_by(epochs.c.epoch))
        return [{**dict(row._mapping), 'metrics': json.loads(row.metrics),
                 'train_loss': _not_finite_as_nan(row.train_loss), 'valid_loss': _not_finite_as_nan(row.valid_loss)}
                for row in rows]

    def _epoch(self, table, run_id: str, epoch: int) -> int | None:
        "The stored epoch that `epoch` names: itself, or the latest for -1."
        if epoch >= 0: return epoch
        return self._all(select(func.max(table.c.epoch)).where(table.c.run_id == run_id))[0][0]

    def confusion(self, run_id: str, epoch: int = -1) -> dict | None:
        """`{'epoch', 'vocab', 'n_classes', 'cells', 'matrix'}` of an epoch (latest for -1), or None if there is none:
        `cells` the (k, 3) int64 (actual, predicted, count) rows of its non-zero cells, in vocab order; `matrix` the
        dense (n, n) counts (rows actual, columns predicted) up to DENSE_CLASSES classes, else None."""
        epoch = self._epoch(confusion, run_id, epoch)
        rows = self._all(select(confusion).where(confusion.c.run_id == run_id, confusion.c.epoch == epoch))
        if not rows: return None
        n, cells = rows[0].n_classes, unpack_cells(rows[0].counts)
        vocab = self.run(run_id)['vocab']
        if not vocab or len(vocab) != n: vocab = [str(i) for i in range(n)]
        return {'epoch': epoch, 'vocab': vocab, 'n_classes': n, 'cells': cells,
                'matrix': dense(cells, n) if n <= DENSE_CLASSES else None}

    def top_losses(self, run_id: str, epoch: int = -1) -> list[dict]:
        """The highest-loss validation items of an epoch (latest for -1), highest first, with thumbnail bytes; `loss`
        and `probability` are None where they were not finite."""
        epoch = self._epoch(top_losses, run_id, epoch)
        query = (select(top_losses).where(top_losses.c.run_id == run_id, top_losses.c.epoch == epoch)
                 .order_by(top_losses.c.rank))
        return [dict(row._mapping) for row in self._all(query)]

    def alerts(self, run_id: str) -> list[dict]:
        "The alerts sent about a run, in order: seq, time, trigger, message, delivered."
        query = select(schema.alerts).where(schema.alerts.c.run_id == run_id).order_by(schema.alerts.c.seq)
        return [{k: v for k, v in row._mapping.items() if k != 'run_id'} for row in self._all(query)]

    # --- write side ------------------------------------------------------------------------------------
    def write(self, rows: dict[str, list], run_updates: dict[str, dict] | None = None) -> None:
        """Insert rows (by table name; each a dict, or a tuple in the table's column order) and update runs, in one
        transaction: all of it lands or none."""
        with self.engine.begin() as conn:
            for table in (runs, *schema.RUN_TABLES):
                if rows.get(table.name):
                    conn.exec_driver_sql(self._insert_sql(table), self._params(table, rows[table.name]))
            for run_id, fields in (run_updates or {}).items():
                conn.execute(runs.update().where(runs.c.id == run_id).values(**fields))

    def write_apart(self, rows: dict[str, list], run_updates: dict[str, dict] | None = None) -> list[tuple]:
        """Write each row, and each run's update, in a transaction of its own: what to do once `write` failed on
        something the database refuses. Returns `(table name, row, error)` for each one it refused; raises when the
        store itself fails (`unavailable`), which no row can be blamed for."""
        refused = []
        writes = [(table.name, row, ({table.name: [row]}, None))
                  for table in (runs, *schema.RUN_TABLES) for row in rows.get(table.name) or ()]
        writes += [('runs', {'id': run_id, **fields}, ({}, {run_id: fields}))
                   for run_id, fields in (run_updates or {}).items()]
        for name, row, alone in writes:
            try: self.write(*alone)
            except Exception as e:
                if unavailable(e): raise
                refused.append((name, row, e))
        return refused

    def _insert_sql(self, table) -> str:
        "A plain positional INSERT in this database's dialect: executemany on it skips SQLAlchemy's per-row work."
        quote = self.engine.dialect.identifier_preparer
        marker = '?' if self.engine.dialect.paramstyle == 'qmark' else '%s'
        return (f'INSERT INTO {quote.format_table(table)} ({", ".join(quote.format_column(c) for c in table.c)}) '
                f'VALUES ({", ".join([marker] * len(table.c))})')

    @staticmethod
    def _params(table, rows: list) -> list[tuple]:
        "Rows as tuples in column order; the rows of one table come all as tuples or all as dicts."
        if isinstance(rows[0], tuple): return rows
        names = table.c.keys()
        return [tuple(row.get(name) for name in names) for row in rows]

