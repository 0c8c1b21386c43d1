"""The store's schema version, and how an existing store is checked or upgraded (the tables are in `tables.py`).

A store's version is the number of upgrades since the first: `MIGRATIONS[v]` brings a store from version v to
v + 1, so a change to the tables is one entry here (new run tables: `AddTables`). An older store whose upgrades
only add run tables can be read without upgrading it (a snapshot, a published run, a read-only copy): its reads of
those tables find no rows."""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection

from ..errors import StoreError
from .confusion import cells_of, pack_cells
from .tables import (
    RunTable,
    alerts,
    confusion,
    decisions,
    item_epochs,
    item_images,
    items,
    meta,
    metadata,
    system,
    top_losses,
)


def _upgrade_from_1(conn: Connection) -> None:
    "Schema 2: nullable top-loss values, every group's lr, sparse confusion cells, alerts."
    if conn.dialect.name == 'sqlite':  # SQLite cannot drop a NOT NULL: rebuild the table
        conn.exec_driver_sql('ALTER TABLE top_losses RENAME TO top_losses_v1')
        top_losses.table.create(conn)
        conn.exec_driver_sql('INSERT INTO top_losses SELECT * FROM top_losses_v1')
        conn.exec_driver_sql('DROP TABLE top_losses_v1')
    else:
        for column in ('loss', 'probability'):
            conn.exec_driver_sql(f'ALTER TABLE top_losses ALTER COLUMN {column} DROP NOT NULL')
    conn.exec_driver_sql('ALTER TABLE batches ADD COLUMN lrs TEXT')
    table = confusion.table
    for row in conn.execute(select(table)).all():
        n = row.n_classes
        matrix = np.frombuffer(zlib.decompress(row.counts), dtype='<u4').reshape(n, n)
        conn.execute(table.update().where(table.c.run_id == row.run_id, table.c.epoch == row.epoch)
                     .values(counts=pack_cells(cells_of(matrix))))
    alerts.table.create(conn)


@dataclass(frozen=True)
class AddTables:
    "An upgrade that only adds run tables: a store without them reads as one whose tables are empty."
    entries: tuple[RunTable, ...]

    def __call__(self, conn: Connection) -> None:
        for entry in self.entries: entry.table.create(conn)


# Upgrades from an older schema: {old_version: function(connection)} bringing it to old_version + 1.
MIGRATIONS = {1: _upgrade_from_1,
              2: AddTables((items, item_epochs, item_images, decisions)),  # items' dynamics, decisions
              3: AddTables((system,))}  # the process's CPU and memory
SCHEMA_VERSION = max(MIGRATIONS) + 1


def ensure_schema(conn: Connection, location: str, create: bool) -> set[str]:
    """Create the tables in an empty database, upgrade an older fastwatch store, or refuse anything else. Returns the
    run tables an older store opened read-only (`create` False) lacks, which reads take as empty."""
    existing = set(inspect(conn).get_table_names())
    if not existing:
        if not create: raise StoreError(f'{location} is empty: it is not a fastwatch store')
        metadata.create_all(conn)
        conn.execute(meta.insert(), [{'key': 'schema_version', 'value': str(SCHEMA_VERSION)}])
        return set()
    if meta.name not in existing:
        raise StoreError(f'{location} is not a fastwatch store (it has tables {", ".join(sorted(existing))})')
    version = int(conn.execute(select(meta.c.value).where(meta.c.key == 'schema_version')).scalar_one())
    if version > SCHEMA_VERSION:
        raise StoreError(f'{location} has store schema {version}, newer than this fastwatch understands '
                         f'({SCHEMA_VERSION}): upgrade fastwatch')
    if version < SCHEMA_VERSION and not create:
        upgrades = [MIGRATIONS.get(v) for v in range(version, SCHEMA_VERSION)]
        if all(isinstance(upgrade, AddTables) for upgrade in upgrades):
            return {entry.name for upgrade in upgrades for entry in upgrade.entries}
        raise StoreError(f'{location} has the older store schema {version}: open it once for writing to upgrade it')
    while version < SCHEMA_VERSION:
        if version not in MIGRATIONS:
            raise StoreError(f'{location} has store schema {version}, which this fastwatch cannot upgrade')
        MIGRATIONS[version](conn)
        version += 1
        conn.execute(meta.update().where(meta.c.key == 'schema_version').values(value=str(version)))
    return set()
