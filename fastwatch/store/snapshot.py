"""Snapshots: a self-contained fastwatch store (one SQLite file) holding chosen runs with all their rows.

A snapshot is an ordinary store, so the dashboard opens it like any other. Rows are copied table by table with
SQLAlchemy Core, so runs move between SQLite and PostgreSQL stores in either direction.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from sqlalchemy import select

from . import schema
from .files import writing
from .schema import runs
from .store import Store, open_store

COPY_CHUNK = 5000  # rows per INSERT while copying


def copy_runs(source: Store, dest: Store, run_ids: Sequence[str]) -> list[str]:
    """Copy runs and all their rows from `source` into `dest` in one transaction (all of it lands or none).
    Runs that `dest` already has are left as they are; returns the ids that were copied."""
    for run_id in run_ids: source.run(run_id)  # RunNotFound names the runs there are
    with dest.engine.connect() as conn:
        present = set(conn.scalars(select(runs.c.id).where(runs.c.id.in_(run_ids))))
    todo = [run_id for run_id in dict.fromkeys(run_ids) if run_id not in present]
    if not todo: return []
    with source.engine.connect() as src, dest.engine.begin() as out:
        for table in (runs, *schema.RUN_TABLES):
            key = table.c.id if table is runs else table.c.run_id
            result = src.execution_options(yield_per=COPY_CHUNK).execute(select(table).where(key.in_(todo)))
            for chunk in result.partitions():
                out.execute(table.insert(), [row._mapping for row in chunk])
    return todo


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
