"""The store: where runs live (one SQLite file by default, or any SQLAlchemy URL such as PostgreSQL).

Its public methods are the read API that the dashboard and the CLI use (typed rows, `tables.py`; run records,
`records.py`), `write` (what the background writer calls: it encodes rows and runs the block-summary pyramid), and
the copy API that snapshots, publishers and followers use (rows as stored, after cursors). Nothing here imports
torch or fastai.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
from sqlalchemy import create_engine, event, exc, func, make_url, select
from sqlalchemy.engine import Connection, Engine

from ..errors import RunNotFound, StoreError
from . import schema
from .blocks import BLOCK_LEVELS, Pyramid, block_span
from .confusion import dense, unpack_cells
from .downsample import minmax_buckets
from .location import display_location, sqlite_path, store_url
from .records import ENDED, RunRecord, encode_fields
from .tables import (
    RUN_TABLES,
    SUMMARISED,
    AlertRow,
    BatchRow,
    EpochRow,
    RunTable,
    TopLossRow,
    alerts,
    batch_blocks,
    batches,
    confusion,
    epochs,
    runs,
    top_losses,
)

HEARTBEAT_SECONDS = 2.0  # how often a recording process marks its open runs as alive
# Seconds a PostgreSQL server may take to answer a new connection: one that accepts and never answers then fails
# like one that refuses, instead of holding the writer (or a dashboard's kernel) for ever.
CONNECT_TIMEOUT = 5
DENSE_CLASSES = 100  # up to this many classes, `confusion` also gives the dense matrix
RUNS = 'runs'  # `write`'s key for new runs' records


@dataclass
class ConfusionMatrix:
    """An epoch's confusion matrix: `cells` the (k, 3) int64 (actual, predicted, count) rows of its non-zero cells,
    in vocab order; `matrix` the dense (n, n) counts (rows actual, columns predicted) up to DENSE_CLASSES classes."""
    epoch: int
    vocab: list[str]
    n_classes: int
    cells: np.ndarray
    matrix: np.ndarray | None


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
        with engine.begin() as conn: absent = schema.ensure_schema(conn, where, create=not readonly)
        if url.startswith('sqlite') and not readonly:
            # WAL (kept in the file): readers never block the writer, and several processes can record at once.
            with engine.connect() as conn: conn.exec_driver_sql('PRAGMA journal_mode=WAL')
    except StoreError: raise
    except Exception as e:
        raise StoreError(f'cannot open store {where}: {str(e).splitlines()[0]}') from e
    store = Store(engine, where, absent)
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


def _not_finite_as_nan(value: float | None) -> float:
    "A value that is always recorded, read back: SQLite stores NaN as NULL."
    return math.nan if value is None else value


def run_table(table: str | RunTable) -> RunTable:
    "The registry entry of a run table, by name or itself."
    return table if isinstance(table, RunTable) else RUN_TABLES[table]


class Store:
    "A fastwatch store: runs, and the rows of each (`tables.RUN_TABLES`)."

    def __init__(self, engine: Engine, location: str, absent: set[str] = frozenset()):
        "`absent`: run tables an older store read as it is does not have (`schema.AddTables`): read as empty."
        self.engine, self.location, self.absent = engine, location, absent
        self.pyramid = Pyramid()  # the block summaries `write` has still open

    def __repr__(self): return f'Store({self.location!r})'

    def close(self) -> None:
        "Release the store's connections."
        self.engine.dispose()

    def all_rows(self, query) -> list:
        "The rows of a query (SQLAlchemy Core), read at once."
        with self.engine.connect() as conn: return list(conn.execute(query))

    # --- runs -------------------------------------------------------------------------------------------
    def runs(self) -> list[RunRecord]:
        "Every run, newest first, each with its derived `state`: live / finished / failed / interrupted."
        now = time.time()
        return [RunRecord.from_row(row, now) for row in self.all_rows(select(runs).order_by(runs.c.created_at.desc()))]

    def run(self, run_id: str) -> RunRecord:
        "One run's record; `RunNotFound` names the runs there are when there is no such run."
        rows = self.all_rows(select(runs).where(runs.c.id == run_id))
        if not rows:
            known = [r[0] for r in self.all_rows(select(runs.c.id).order_by(runs.c.created_at.desc()).limit(10))]
            raise RunNotFound(f"no run {run_id!r} in {self.location}; "
                              + (f"runs: {', '.join(known)}" if known else 'it has no runs yet'))
        return RunRecord.from_row(rows[0], time.time())

    def runs_version(self) -> tuple:
        "One cheap read that changes whenever a run is added or its record changes: (runs, latest update)."
        return tuple(self.all_rows(select(func.count(), func.max(runs.c.updated_at)).select_from(runs))[0])

    # --- a run's rows -----------------------------------------------------------------------------------
    def rows(self, table: str | RunTable, run_id: str, since=None, **equal) -> list:
        """A run's rows of a table (typed, JSON columns parsed) in cursor order; only those after cursor `since`,
        and whose columns are `equal` to the values given."""
        entry = run_table(table)
        if entry.name in self.absent: return []
        t = entry.table
        query = select(t).where(t.c.run_id == run_id, *(t.c[name] == value for name, value in equal.items()))
        if since is not None: query = query.where(t.c[entry.cursor] > since)
        return [entry.decode(row) for row in self.all_rows(query.order_by(t.c[entry.cursor], *t.primary_key.columns))]

    def counts(self, run_id: str) -> dict[str, int]:
        "How many rows of each kind the run has recorded (summaries derived from them left out)."
        self.run(run_id)
        with self.engine.connect() as conn:
            return {entry.name: conn.execute(select(func.count()).select_from(entry.table)
                                             .where(entry.table.c.run_id == run_id)).scalar()
                    if entry.name not in self.absent else 0 for entry in RUN_TABLES.values() if not entry.derived}

    def batches(self, run_id: str, since: int | None = None) -> dict[str, list]:
        """Columns of the batch rows after step `since` (all when None): pass the last `step` back as the cursor.
        `lr` and `mom` are the last parameter group's; `lrs` every group's lr (None where there is one group)."""
        rows = self.rows(batches, run_id, since)
        return {name: [getattr(row, name) for row in rows] for name in BatchRow._fields if name != 'run_id'}

    def last_batch(self, run_id: str) -> BatchRow | None:
        "The run's latest batch row, or None before its first."
        t = batches.table
        found = self.all_rows(select(t).where(t.c.run_id == run_id).order_by(t.c.step.desc()).limit(1))
        return batches.decode(found[0]) if found else None

    def batch_times(self, run_id: str, steps) -> dict[int, float]:
        "The time of the run's batch rows at `steps` (those it has), by step."
        t = batches.table
        return dict(self.all_rows(select(t.c.step, t.c.time).where(t.c.run_id == run_id, t.c.step.in_(list(steps)))))

    def batches_downsampled(self, run_id: str, n: int = 2000) -> dict:
        """At most about `n` points for each of loss, smooth_loss, lr and mom, keeping each range's min and max
        and the last point: `{'cursor': last step, 'series': {name: {'step': [...], 'value': [...]}}}`.
        Pass `cursor` to `batches(since=...)` to follow the run from there."""
        blocks = batch_blocks.table
        with self.engine.connect() as conn:
            last = conn.execute(select(func.max(batches.table.c.step))
                                .where(batches.table.c.run_id == run_id)).scalar()
            # Long runs read the coarsest block summaries that are no wider than a bucket; short ones read rows.
            span = 0 if last is None else (last + 1) / max(1, n // 2)
            level = max((level for level in range(BLOCK_LEVELS) if block_span(level) <= span), default=None)
            summary = [c for c in blocks.c if c.name not in ('run_id', 'level', 'block')]
            query = (select(*summary).where(blocks.c.run_id == run_id, blocks.c.level == level)
                     .order_by(blocks.c.block))
            rows = [tuple(row) for row in conn.execute(query)] if level is not None else []
            found = np.array(rows, dtype=float).reshape(-1, len(summary))  # None -> NaN
        block = {c.name: found[:, i] for i, c in enumerate(summary)}
        covered = int(block['last_step'][-1]) if len(found) else -1
        tail = self.batches(run_id, since=covered)
        if not len(found) and len(tail['step']) <= n:
            return {'cursor': last,
                    'series': {name: {'step': tail['step'], 'value': tail[name]} for name in SUMMARISED}}
        series = {}
        for name in SUMMARISED:
            both = lambda key, rows, name=name: np.concatenate([block[f'{name}_{key}'], np.array(rows, dtype=float)])
            steps, values = minmax_buckets(both('min_step', tail['step']), both('min', tail[name]),
                                           both('max_step', tail['step']), both('max', tail[name]), n)
            series[name] = {'step': steps.tolist(), 'value': values.tolist()}
        if not tail['step']:  # the last point lies inside the last block: add it
            last_row = self.last_batch(run_id)
            for name, points in series.items():
                value = getattr(last_row, name)
                if value is not None and (not points['step'] or points['step'][-1] != last):
                    points['step'].append(last); points['value'].append(value)
        return {'cursor': last, 'series': series}

    def epochs(self, run_id: str, since: int | None = None) -> list[EpochRow]:
        """The run's finished epochs (after epoch `since`), their metrics as fastai's Recorder logged them. The losses
        are NaN where they were not finite (or where no validation pass gave one)."""
        return [row._replace(train_loss=_not_finite_as_nan(row.train_loss),
                             valid_loss=_not_finite_as_nan(row.valid_loss))
                for row in self.rows(epochs, run_id, since)]

    def _epoch(self, table: RunTable, run_id: str, epoch: int) -> int | None:
        "The stored epoch that `epoch` names: itself, or the latest for -1."
        if epoch >= 0: return epoch
        t = table.table
        return self.all_rows(select(func.max(t.c.epoch)).where(t.c.run_id == run_id))[0][0]

    def confusion(self, run_id: str, epoch: int = -1) -> ConfusionMatrix | None:
        "The confusion matrix of an epoch (the latest for -1), or None if there is none."
        epoch = self._epoch(confusion, run_id, epoch)
        t = confusion.table
        rows = self.all_rows(select(t).where(t.c.run_id == run_id, t.c.epoch == epoch))
        if not rows: return None
        n, cells = rows[0].n_classes, unpack_cells(rows[0].counts)
        vocab = self.run(run_id).vocab
        if not vocab or len(vocab) != n: vocab = [str(i) for i in range(n)]
        return ConfusionMatrix(epoch, vocab, n, cells, dense(cells, n) if n <= DENSE_CLASSES else None)

    def top_losses(self, run_id: str, epoch: int = -1) -> list[TopLossRow]:
        """The highest-loss validation items of an epoch (latest for -1), highest first, with thumbnail bytes; `loss`
        and `probability` are None where they were not finite."""
        epoch = self._epoch(top_losses, run_id, epoch)
        t = top_losses.table
        query = select(t).where(t.c.run_id == run_id, t.c.epoch == epoch).order_by(t.c.rank)
        return [top_losses.decode(row) for row in self.all_rows(query)]

    def alerts(self, run_id: str, since: int | None = None) -> list[AlertRow]:
        "The alerts sent about a run (after `seq` `since`), in order."
        return self.rows(alerts, run_id, since)

    # --- the write side ---------------------------------------------------------------------------------
    def write(self, rows: dict[str, list], run_updates: dict[str, dict] | None = None) -> None:
        """Write in one transaction (all of it lands or none): new runs (`rows['runs']`, `RunRecord`s), rows of run
        tables (by table name, typed rows), and changes to runs' fields. Batch rows add to the block summaries,
        and a run that ends closes its open blocks: all of a run's batch rows and its end go through one `Store`
        (`blocks.py`)."""
        run_updates = run_updates or {}
        ended = [run_id for run_id, fields in run_updates.items() if fields.get('status') in ENDED]
        blocks, pyramid = self.pyramid.add(rows.get(batches.name) or (), ended)
        with self.engine.begin() as conn:
            if rows.get(RUNS): conn.execute(runs.insert(), [record.row() for record in rows[RUNS]])
            for entry in RUN_TABLES.values():
                found = blocks if entry is batch_blocks else rows.get(entry.name)
                if found: conn.exec_driver_sql(self._insert_sql(entry.table), entry.encode(found))
            for run_id, fields in run_updates.items():
                conn.execute(runs.update().where(runs.c.id == run_id).values(**encode_fields(fields)))
        self.pyramid.keep(pyramid)

    def write_apart(self, rows: dict[str, list], run_updates: dict[str, dict] | None = None) -> list[tuple]:
        """Write each row, and each run's update, in a transaction of its own: what to do once `write` failed on
        something the database refuses. Returns `(table name, run id, error)` for each one it refused; raises when
        the store itself fails (`unavailable`), which no row can be blamed for."""
        refused = []
        writes = [(name, row.id if name == RUNS else row.run_id, ({name: [row]}, None))
                  for name, table_rows in rows.items() for row in table_rows]
        writes += [(RUNS, run_id, ({}, {run_id: fields})) for run_id, fields in (run_updates or {}).items()]
        for name, run_id, alone in writes:
            try: self.write(*alone)
            except Exception as e:
                if unavailable(e): raise
                refused.append((name, run_id, e))
        return refused

    def _insert_sql(self, table) -> str:
        "A plain positional INSERT in this database's dialect: executemany on it skips SQLAlchemy's per-row work."
        quote = self.engine.dialect.identifier_preparer
        marker = '?' if self.engine.dialect.paramstyle == 'qmark' else '%s'
        return (f'INSERT INTO {quote.format_table(table)} ({", ".join(quote.format_column(c) for c in table.c)}) '
                f'VALUES ({", ".join([marker] * len(table.c))})')

    # --- the copy API: rows as stored ---------------------------------------------------------------------
    def rows_after(self, run_id: str, cursors: dict[str, object]) -> tuple[dict[str, list[dict]], dict]:
        """The run's record and its rows of every run table after `cursors` ({table: last cursor value read}; a
        table not named: all), as stored; and the cursors after them. The record is read first: when it says the
        run ended, every row of the run is already there."""
        cursors = dict(cursors)
        with self.engine.connect() as conn:
            found = conn.execute(select(runs).where(runs.c.id == run_id)).one_or_none()
            if found is None: self.run(run_id)  # RunNotFound names the runs there are
            rows = {RUNS: [dict(found._mapping)]}
            for entry in RUN_TABLES.values():
                if entry.name in self.absent:
                    rows[entry.name] = []
                    continue
                t, cursor = entry.table, entry.table.c[entry.cursor]
                query = select(t).where(t.c.run_id == run_id)
                if cursors.get(entry.name) is not None: query = query.where(cursor > cursors[entry.name])
                rows[entry.name] = [dict(row._mapping) for row in conn.execute(query.order_by(cursor))]
                if rows[entry.name]: cursors[entry.name] = rows[entry.name][-1][entry.cursor]
        return rows, cursors

    def put(self, rows: dict[str, list[dict]], replace: bool = False) -> None:
        """Insert rows as stored (`rows_after`'s), runs first, in one transaction; `replace` (SQLite stores) replaces
        rows whose key is already there."""
        with self.engine.begin() as conn: put_rows(conn, rows, replace)


def put_rows(conn: Connection, rows: dict[str, list[dict]], replace: bool = False) -> None:
    "Insert rows as stored, by table name (`runs` first), on a connection; `replace` replaces (SQLite)."
    for table in (runs, *(entry.table for entry in RUN_TABLES.values())):
        if rows.get(table.name):
            insert = table.insert().prefix_with('OR REPLACE') if replace else table.insert()
            conn.execute(insert, rows[table.name])
