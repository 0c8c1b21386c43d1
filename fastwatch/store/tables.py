"""The store's tables, and the registry of a run's tables that everything else iterates.

`runs` holds one row per run (its record: `records.RunRecord`). Every other table holds rows of one run, keyed by
`run_id` and more columns, and is registered here once, as a `RunTable`: its typed row (a named tuple of its
columns, cheap enough for the per-batch path), the column whose growing value says which rows are new (its cursor:
followers, publishers and dashboards read `WHERE cursor > last seen`), the columns kept as JSON text, and how many
of its rows a writer keeps in memory while the store fails. The writer, the store's reads and `counts`, snapshots,
imports, exports, the publisher and the follower all loop over `RUN_TABLES`: a new table is one `run_table(...)`
here, plus the migration that creates it in older stores (`schema.MIGRATIONS`).

A cursor's rows are written in order: no row with a smaller cursor value is committed after one with a larger, and
the rows that share a value are committed together.
"""
from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Boolean, Column, Float, Integer, LargeBinary, MetaData, String, Table, Text

from ..errors import StoreError

metadata = MetaData()

# Rows of one table a writer keeps in memory while the store fails, unless the table says otherwise.
BUFFERED_ROWS = 1_000_000

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
             Column('info', Text, nullable=False),  # JSON: `records.RunInfo`
             Column('config', Text, nullable=False),  # JSON: the user's config= dict
             Column('vocab', Text),  # JSON list, for classification runs
             Column('lost_rows', Integer, nullable=False, default=0))


@dataclass(frozen=True)
class RunTable:
    """One table of a run's rows: `table` (its first column `run_id`), `Row` (a named tuple of its columns, in
    order), `cursor` (the column that orders what is new), `json_columns` (stored as JSON text), `bound` (rows kept
    in memory while the store fails), `derived` (rows computed from other tables' rows, not recorded themselves)."""
    table: Table
    cursor: str
    json_columns: tuple[str, ...] = ()
    bound: int = BUFFERED_ROWS
    derived: bool = False
    Row: type = field(init=False, repr=False)

    def __post_init__(self):
        assert self.table.c.keys()[0] == 'run_id' and self.cursor in self.table.c, self.table.name
        name = ''.join(part.title() for part in self.table.name.split('_')) + 'Row'
        object.__setattr__(self, 'Row', namedtuple(name, self.table.c.keys()))

    @property
    def name(self) -> str: return self.table.name

    @property
    def key(self) -> list[str]:
        "The primary key's columns, `run_id` first."
        return [c.name for c in self.table.primary_key.columns]

    def encode(self, rows: Iterable[tuple]) -> list[tuple]:
        "Rows as the database takes them: JSON columns as text (None stays NULL)."
        if not self.json_columns: return rows if isinstance(rows, list) else list(rows)
        at = [self.table.c.keys().index(name) for name in self.json_columns]
        encoded = []
        for row in rows:
            for i in at:  # most rows have none (one parameter group: no `lrs`)
                if row[i] is not None:
                    row = tuple(json.dumps(v, default=str) if j in at and v is not None else v
                                for j, v in enumerate(row))
                    break
            encoded.append(row)
        return encoded

    def decode(self, row) -> tuple:
        "A database row (its columns in order) as this table's `Row`, JSON columns parsed."
        row = self.Row(*row)
        if not self.json_columns: return row
        return row._replace(**{name: parse_json(getattr(row, name), f'{self.name}.{name} of run {row.run_id!r}')
                               for name in self.json_columns if getattr(row, name) is not None})


def parse_json(text: str, what: str):
    "A JSON column's value; `StoreError` naming `what` when the text is not JSON (a damaged store)."
    try: return json.loads(text)
    except (TypeError, ValueError): raise StoreError(f"{what} is not valid JSON: the store is damaged") from None


RUN_TABLES: dict[str, RunTable] = {}


def run_table(name: str, *columns: Column, cursor: str, json_columns: tuple[str, ...] = (),
              bound: int = BUFFERED_ROWS, derived: bool = False) -> RunTable:
    "Declare and register a table of a run's rows: `run_id` comes first, then `columns`."
    table = Table(name, metadata, Column('run_id', String(32), primary_key=True), *columns, sqlite_with_rowid=False)
    RUN_TABLES[name] = entry = RunTable(table, cursor, json_columns, bound, derived)
    return entry


def _key(name: str, kind=Integer) -> Column:
    return Column(name, kind, primary_key=True, autoincrement=False)


# One row per training batch. `step` counts on across the fits of one run (fine_tune's two fits).
batches = run_table(
    'batches', _key('step'),
    Column('epoch', Integer, nullable=False),
    Column('fit', Integer, nullable=False),
    Column('frozen', Boolean, nullable=False),
    Column('loss', Float),
    Column('smooth_loss', Float),
    Column('lr', Float),  # the last parameter group's
    Column('mom', Float),
    Column('time', Float, nullable=False),
    Column('lrs', Text),  # every parameter group's lr, when the optimizer has several
    cursor='step', json_columns=('lrs',))

# Min/max summaries of consecutive batch rows (`blocks.py`), so long runs downsample without reading every row.
# A block is written in the same transaction as the batch row that completes it, and its parents with it.
SUMMARISED = ('loss', 'smooth_loss', 'lr', 'mom')
SUMMARY_FIELDS = ('min', 'min_step', 'max', 'max_step')
batch_blocks = run_table(
    'batch_blocks', _key('level'), _key('block'),
    Column('last_step', Integer, nullable=False),
    *[Column(f'{name}_{part}', Integer if part.endswith('step') else Float)
      for name in SUMMARISED for part in SUMMARY_FIELDS],
    cursor='last_step', derived=True)

epochs = run_table(
    'epochs', _key('epoch'),
    Column('fit', Integer, nullable=False),
    Column('frozen', Boolean, nullable=False),
    Column('step', Integer, nullable=False),  # last global step of the epoch
    Column('train_loss', Float),
    Column('valid_loss', Float),
    Column('metrics', Text, nullable=False),  # {name: value}, as fastai's Recorder logs them
    Column('duration', Float, nullable=False),
    Column('time', Float, nullable=False),
    cursor='epoch', json_columns=('metrics',))

# The confusion matrix of each validation pass: its non-zero cells (`confusion.py`), row = actual, column = predicted.
confusion = run_table(
    'confusion', _key('epoch'),
    Column('n_classes', Integer, nullable=False),
    Column('counts', LargeBinary, nullable=False),
    cursor='epoch')

top_losses = run_table(
    'top_losses', _key('epoch'), _key('rank'),
    Column('item_index', Integer, nullable=False),
    Column('item', Text, nullable=False),  # the item's identity, e.g. its file path
    Column('actual', Text, nullable=False),
    Column('predicted', Text, nullable=False),
    Column('probability', Float),  # NULL when not finite
    Column('loss', Float),  # NULL when not finite
    Column('image', LargeBinary),  # thumbnail of the decoded input, for image data
    Column('image_type', String(32)),  # e.g. image/png
    Column('text', Text),  # short text form, for other inputs
    cursor='epoch', bound=10_000)  # thumbnails weigh more than other rows

# Alerts sent about a run (finished, failed, non-finite loss, a metric's threshold or plateau), in order.
alerts = run_table(
    'alerts', _key('seq'),
    Column('time', Float, nullable=False),
    Column('trigger', String(32), nullable=False),  # finished / failed / non_finite / threshold / plateau
    Column('message', Text, nullable=False),
    Column('delivered', Boolean, nullable=False),  # False when every notifier failed
    cursor='seq')

# The items of each split of a run's data, once: each one's identity (a file path relative to `root`, or a row index)
# and, for files, their size and modification time (ns) when recorded: a cleanup acts only on files the run saw.
items = run_table(
    'items', _key('split', String(8)),  # train / valid (`dynamics.SPLITS`)
    Column('epoch', Integer, nullable=False),  # the epoch they were recorded at
    Column('root', Text),  # the folder the item files are under, for files
    Column('names', Text, nullable=False),  # one name per dataset index
    Column('files', Text),  # [size, mtime_ns] per dataset index, for files
    cursor='epoch', json_columns=('names', 'files'))

# Every item's values of one split in one epoch, as packed arrays (`dynamics.ItemValues`): not a row per item.
item_epochs = run_table(
    'item_epochs', _key('epoch'), _key('split', String(8)),
    Column('n_items', Integer, nullable=False),
    Column('item_values', LargeBinary, nullable=False),
    cursor='epoch', bound=10_000)

# Thumbnails (or short texts) of the items the data panel shows beyond the top losses: each epoch's top suspects.
item_images = run_table(
    'item_images', _key('split', String(8)), _key('item_index'),
    Column('epoch', Integer, nullable=False),  # the epoch it was first shown in
    Column('image', LargeBinary),
    Column('image_type', String(32)),
    Column('text', Text),
    cursor='epoch', bound=10_000)

# What the run's owner decided about items (`decisions.py`), in order: the latest row of an item is its decision.
decisions = run_table(
    'decisions', _key('seq'),
    Column('time', Float, nullable=False),
    Column('split', String(8), nullable=False),
    Column('item_index', Integer, nullable=False),
    Column('item', Text, nullable=False),  # the item's identity, as `items.names` has it
    Column('action', String(16), nullable=False),  # keep / delete / relabel / undo (`decisions.ACTIONS`)
    Column('label', Text),  # the new class, for relabel
    cursor='seq')

# The training process every few seconds (`record/system.py`), sampled in the writer's thread: its CPU use (% of one
# core since the last sample) and resident memory, and on CUDA the device memory of torch's allocator and the GPU's
# use. `step`: the last batch written when it was sampled, so that it lines up with the loss.
system = run_table(
    'system', _key('seq'),
    Column('time', Float, nullable=False),
    Column('step', Integer),
    Column('cpu_percent', Float),
    Column('rss_mb', Float),
    Column('cuda_allocated_mb', Float),
    Column('cuda_reserved_mb', Float),
    Column('gpu_percent', Float),
    cursor='seq')

BatchRow, BlockRow, EpochRow = batches.Row, batch_blocks.Row, epochs.Row
ConfusionRow, TopLossRow, AlertRow = confusion.Row, top_losses.Row, alerts.Row
ItemsRow, ItemEpochRow, ItemImageRow, DecisionRow = items.Row, item_epochs.Row, item_images.Row, decisions.Row
SystemRow = system.Row
