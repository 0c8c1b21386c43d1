"""Snapshots: a self-contained fastwatch store (one SQLite file) holding chosen runs with all their rows.

A snapshot is an ordinary store, so the dashboard opens it like any other. Rows are copied table by table with
SQLAlchemy Core, so runs move between SQLite and PostgreSQL stores in either direction.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from sqlalchemy import Table, exc, select
from sqlalchemy.engine import Connection

from ..errors import StoreError
from .files import writing
from .store import Store, open_store
from .tables import RUN_TABLES, runs

COPY_CHUNK = 5000  # rows per INSERT while copying


def copy_runs(source: Store, dest: Store, run_ids: Sequence[str]) -> dict[str, int]:
    """Copy runs and all their rows from `source` into `dest` in one transaction (all of it lands or none).
    Of a run that `dest` already has, only the rows it lacks are copied, and its record is updated when the source's
    is newer; so copying twice adds nothing. Returns {run id: rows added or updated} for the runs that changed."""
    for run_id in run_ids: source.run(run_id)  # RunNotFound names the runs there are
    changed = {}
    try:
        with source.engine.connect() as src, dest.engine.begin() as out:
            for run_id in dict.fromkeys(run_ids):
                added = sum(_copy_missing(src, out, table, run_id)
                            for table in (runs, *(entry.table for entry in RUN_TABLES.values()
                                                  if entry.name not in source.absent)))
                if added: changed[run_id] = added
    except exc.SQLAlchemyError as e:  # rows the destination refuses (a damaged snapshot's): nothing was copied
        reason = str(getattr(e, 'orig', None) or e).splitlines()[0]
        raise StoreError(f'cannot copy runs from {source.location} into {dest.location}: {reason}') from None
    return changed


def _copy_missing(src: Connection, out: Connection, table: Table, run_id: str) -> int:
    "Insert the rows of one run and table that `out` lacks (by primary key); a newer run record replaces the old."
    key = table.c.id if table is runs else table.c.run_id
    if table is runs:
        here = out.execute(select(runs.c.updated_at).where(key == run_id)).scalar()
        if here is not None:
            row = src.execute(select(runs).where(key == run_id, runs.c.updated_at > here)).first()
            if row is not None: out.execute(runs.update().where(key == run_id).values(**row._mapping))
            return int(row is not None)
    columns = list(table.primary_key.columns)
    present = {tuple(row) for row in out.execute(select(*columns).where(key == run_id))}
    result = src.execution_options(yield_per=COPY_CHUNK).execute(select(table).where(key == run_id))
    added = 0
    for chunk in result.partitions():
        missing = [row._mapping for row in chunk if tuple(row._mapping[c.name] for c in columns) not in present]
        if missing: out.execute(table.insert(), missing)
        added += len(missing)
    return added


def write_snapshot(store: Store, run_ids: Sequence[str], path: str | os.PathLike, force: bool = False) -> None:
    "Write runs of `store` into a new snapshot file at `path` (an existing file is replaced only with `force`)."
    with writing(path, force) as tmp:
        snapshot = open_store(tmp)
        try:
            copy_runs(store, snapshot, run_ids)
            # Rollback-journal mode, not the WAL a writable store uses: a committed snapshot then opens read-only
            # anywhere, with no -wal/-shm files beside it.
            with snapshot.engine.connect() as conn: conn.exec_driver_sql('PRAGMA journal_mode=DELETE')
        finally:
            snapshot.close()
