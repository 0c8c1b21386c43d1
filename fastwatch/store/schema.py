"""The store's tables, its schema version, and how an existing store is checked or upgraded."""
from __future__ import annotations

import zlib

import numpy as np
from sqlalchemy import Boolean, Column, Float, Integer, LargeBinary, MetaData, String, Table, Text, inspect, select
from sqlalchemy.engine import Connection

from ..errors import StoreError
from .confusion import cells_of, pack_cells

SCHEMA_VERSION = 2

metadata = MetaData()

meta = Table('fastwatch_meta', metadata,
             Column('key', String(64), primary_key=True),
             Column('value', Text, nullable=False))

runs = Table('runs', metadata,
             Column('id', String(32), primary_key=True),
             Column('name', Text),
             Column('status', String(16), nullable=False),  # running / finished / failed / interrupted
             Column('error', Text),
             Column('created_at', Float, nullable=False),
             Column('updated_at', Float, nullable=False),
             Column('heartbeat', Float, nullable=False),
             Column('info', Text, nullable=False),  # JSON: host, versions, model, data sizes, fits, ...
             Column('config', Text, nullable=False),  # JSON: the user's config= dict
             Column('vocab', Text),  # JSON list, for classification runs
             Column('lost_rows', Integer, nullable=False, default=0))

# One row per training batch. `step` counts on across the fits of one run (fine_tune's two fits).
batches = Table('batches', metadata,
                Column('run_id', String(32), primary_key=True),
                Column('step', Integer, primary_key=True, autoincrement=False),
                Column('epoch', Integer, nullable=False),
                Column('fit', Integer, nullable=False),
                Column('frozen', Boolean, nullable=False),
                Column('loss', Float),
                Column('smooth_loss', Float),
                Column('lr', Float),
                Column('mom', Float),
                Column('time', Float, nullable=False),
                Column('lrs', Text),  # JSON list of every parameter group's lr, when the optimizer has several
                sqlite_with_rowid=False)

# Min/max summaries of consecutive batch rows, so long runs downsample without reading every row: a level-L block
# covers BLOCK_STEPS * BLOCK_FANOUT**L steps and summarises BLOCK_FANOUT blocks of level L - 1.
BLOCK_STEPS, BLOCK_FANOUT, BLOCK_LEVELS = 64, 4, 4
SUMMARISED = ('loss', 'smooth_loss', 'lr', 'mom')
SUMMARY_FIELDS = ('min', 'min_step', 'max', 'max_step')
batch_blocks = Table('batch_blocks', metadata,
                     Column('run_id', String(32), primary_key=True),
                     Column('level', Integer, primary_key=True, autoincrement=False),
                     Column('block', Integer, primary_key=True, autoincrement=False),
                     Column('last_step', Integer, nullable=False),
                     *[Column(f'{name}_{field}', Integer if field.endswith('step') else Float)
                       for name in SUMMARISED for field in SUMMARY_FIELDS],
                     sqlite_with_rowid=False)

epochs = Table('epochs', metadata,
               Column('run_id', String(32), primary_key=True),
               Column('epoch', Integer, primary_key=True, autoincrement=False),
               Column('fit', Integer, nullable=False),
               Column('frozen', Boolean, nullable=False),
               Column('step', Integer, nullable=False),  # last global step of the epoch
               Column('train_loss', Float),
               Column('valid_loss', Float),
               Column('metrics', Text, nullable=False),  # JSON {name: value}, as fastai's Recorder reports
               Column('duration', Float, nullable=False),
               Column('time', Float, nullable=False),
               sqlite_with_rowid=False)

# The confusion matrix of each validation pass: its non-zero cells (`confusion.py`), row = actual, column = predicted.
confusion = Table('confusion', metadata,
                  Column('run_id', String(32), primary_key=True),
                  Column('epoch', Integer, primary_key=True, autoincrement=False),
                  Column('n_classes', Integer, nullable=False),
                  Column('counts', LargeBinary, nullable=False),
                  sqlite_with_rowid=False)

top_losses = Table('top_losses', metadata,
                   Column('run_id', String(32), primary_key=True),
                   Column('epoch', Integer, primary_key=True, autoincrement=False),
                   Column('rank', Integer, primary_key=True, autoincrement=False),
                   Column('item_index', Integer, nullable=False),
                   Column('item', Text, nullable=False),  # the item's identity, e.g. its file path
                   Column('actual', Text, nullable=False),
                   Column('predicted', Text, nullable=False),
                   Column('probability', Float),  # NULL when not finite
                   Column('loss', Float),  # NULL when not finite
                   Column('image', LargeBinary),  # thumbnail of the decoded input, for image data
                   Column('image_type', String(32)),  # e.g. image/png
                   Column('text', Text),  # short text form, for other inputs
                   sqlite_with_rowid=False)

# Alerts sent about a run (finished, failed, non-finite loss, a metric's threshold or plateau), in order.
alerts = Table('alerts', metadata,
               Column('run_id', String(32), primary_key=True),
               Column('seq', Integer, primary_key=True, autoincrement=False),
               Column('time', Float, nullable=False),
               Column('trigger', String(32), nullable=False),  # finished / failed / non_finite / threshold / plateau
               Column('message', Text, nullable=False),
               Column('delivered', Boolean, nullable=False),  # False when every notifier failed
               sqlite_with_rowid=False)

RUN_TABLES = (batches, batch_blocks, epochs, confusion, top_losses, alerts)


def _upgrade_from_1(conn: Connection) -> None:
    "Schema 2: nullable top-loss values, every group's lr, sparse confusion cells, alerts."
    if conn.dialect.name == 'sqlite':  # SQLite cannot drop a NOT NULL: rebuild the table
        conn.exec_driver_sql('ALTER TABLE top_losses RENAME TO top_losses_v1')
        top_losses.create(conn)
        conn.exec_driver_sql('INSERT INTO top_losses SELECT * FROM top_losses_v1')
        conn.exec_driver_sql('DROP TABLE top_losses_v1')
    else:
        for column in ('loss', 'probability'):
            conn.exec_driver_sql(f'ALTER TABLE top_losses ALTER COLUMN {column} DROP NOT NULL')
    conn.exec_driver_sql('ALTER TABLE batches ADD COLUMN lrs TEXT')
    for row in conn.execute(select(confusion)).all():
        n = row.n_classes
        matrix = np.frombuffer(zlib.decompress(row.counts), dtype='<u4').reshape(n, n)
        conn.execute(confusion.update().where(confusion.c.run_id == row.run_id, confusion.c.epoch == row.epoch)
                     .values(counts=pack_cells(cells_of(matrix))))
    alerts.create(conn)


# Upgrades from an older schema: {old_version: function(connection)} bringing it to old_version + 1.
MIGRATIONS = {1: _upgrade_from_1}


def ensure_schema(conn: Connection, location: str, create: bool) -> None:
    "Create the tables in an empty database, upgrade an older fastwatch store, or refuse anything else."
    existing = set(inspect(conn).get_table_names())
    if not existing:
        if not create: raise StoreError(f'{location} is empty: it is not a fastwatch store')
        metadata.create_all(conn)
        conn.execute(meta.insert(), [{'key': 'schema_version', 'value': str(SCHEMA_VERSION)}])
        return
    if meta.name not in existing:
        raise StoreError(f'{location} is not a fastwatch store (it has tables {", ".join(sorted(existing))})')
    version = int(conn.execute(select(meta.c.value).where(meta.c.key == 'schema_version')).scalar_one())
    if version > SCHEMA_VERSION:
        raise StoreError(f'{location} has store schema {version}, newer than this fastwatch understands '
                         f'({SCHEMA_VERSION}): upgrade fastwatch')
    if version < SCHEMA_VERSION and not create:
        raise StoreError(f'{location} has the older store schema {version}: open it once for writing to upgrade it')
    while version < SCHEMA_VERSION:
        if version not in MIGRATIONS:
            raise StoreError(f'{location} has store schema {version}, which this fastwatch cannot upgrade')
        MIGRATIONS[version](conn)
        version += 1
        conn.execute(meta.update().where(meta.c.key == 'schema_version').values(value=str(version)))
