"""The store: schema and its checks, the read API, downsampling, SQLite WAL and PostgreSQL."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import batch_row, start_synthetic_run, train
from sqlalchemy import create_engine

from fastwatch import RunNotFound, StoreError, open_store
from fastwatch.record.writer import Writer
from fastwatch.store import schema
from fastwatch.store.blocks import BLOCK_LEVELS, BLOCK_STEPS, block_span
from fastwatch.store.snapshot import write_snapshot
from fastwatch.store.tables import TopLossRow

ROOT = Path(__file__).parent.parent


def test_import_fastwatch_stays_light():
    code = ('import sys, fastwatch, fastwatch.store, fastwatch.view.terminal; '
            'print(sorted(m for m in ("torch", "fastai", "torchvision") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]'


def test_new_store_has_schema_version_and_wal(tmp_path):
    open_store(tmp_path / 'new.db')
    conn = sqlite3.connect(tmp_path / 'new.db')
    assert conn.execute("SELECT value FROM fastwatch_meta WHERE key='schema_version'").fetchone() == (
        str(schema.SCHEMA_VERSION),)
    assert conn.execute('PRAGMA journal_mode').fetchone() == ('wal',)


def test_readonly_open_of_a_missing_store_creates_nothing(tmp_path):
    with pytest.raises(StoreError, match='no fastwatch store at'): open_store(tmp_path / 'missing.db', readonly=True)
    assert not (tmp_path / 'missing.db').exists()


def test_a_sqlite_file_that_is_not_a_store_is_refused_and_left_alone(tmp_path):
    path = tmp_path / 'other.db'
    sqlite3.connect(path).execute('CREATE TABLE notes (x)')
    before = path.read_bytes()
    for readonly in (True, False):
        with pytest.raises(StoreError, match=r'is not a fastwatch store \(it has tables notes\)'):
            open_store(path, readonly=readonly)
    assert path.read_bytes() == before


def test_a_file_that_is_not_sqlite_is_one_clear_error(tmp_path):
    path = tmp_path / 'text.db'
    path.write_text('hello, not a database\n' * 100)
    with pytest.raises(StoreError, match='cannot open store .*text.db: .*not a database'):
        open_store(path, readonly=True)


def test_a_newer_schema_is_refused(tmp_path):
    open_store(tmp_path / 'future.db')
    with sqlite3.connect(tmp_path / 'future.db') as conn:
        conn.execute("UPDATE fastwatch_meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(StoreError, match='schema 99, newer than this fastwatch understands'):
        open_store(tmp_path / 'future.db')


def test_an_older_schema_without_migration_says_why(tmp_path, monkeypatch):
    open_store(tmp_path / 'old.db')
    monkeypatch.setattr(schema, 'SCHEMA_VERSION', schema.SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match='open it once for writing to upgrade it'):
        open_store(tmp_path / 'old.db', readonly=True)
    with pytest.raises(StoreError, match='which this fastwatch cannot upgrade'):
        open_store(tmp_path / 'old.db')


def test_an_older_schema_is_upgraded_by_its_migration(tmp_path, monkeypatch):
    open_store(tmp_path / 'old.db')
    applied = []
    monkeypatch.setattr(schema, 'SCHEMA_VERSION', schema.SCHEMA_VERSION + 1)
    monkeypatch.setitem(schema.MIGRATIONS, schema.SCHEMA_VERSION - 1,
                        lambda conn: applied.append(conn.exec_driver_sql('ALTER TABLE runs ADD COLUMN tag TEXT')))
    open_store(tmp_path / 'old.db')
    assert applied and open_store(tmp_path / 'old.db', readonly=True)
    with sqlite3.connect(tmp_path / 'old.db') as conn:
        assert conn.execute("SELECT value FROM fastwatch_meta").fetchone() == (str(schema.SCHEMA_VERSION),)
        assert 'tag' in [c[1] for c in conn.execute('PRAGMA table_info(runs)')]


def test_unknown_run_names_the_runs_there_are(trained):
    with pytest.raises(RunNotFound) as error: trained['store'].run('nosuchrun')
    assert str(error.value) == f"no run 'nosuchrun' in {trained['path']}; runs: {trained['run_id']}"


def test_batches_since_a_cursor_returns_only_what_is_new(trained):
    store, run_id = trained['store'], trained['run_id']
    everything = store.batches(run_id)
    cursor = everything['step'][9]
    newer = store.batches(run_id, since=cursor)
    assert newer['step'] == everything['step'][10:] and newer['loss'] == everything['loss'][10:]
    assert store.batches(run_id, since=everything['step'][-1])['step'] == []


def test_readonly_store_cannot_be_written(trained):
    reader = open_store(trained['path'], readonly=True)
    with pytest.raises(Exception, match='readonly'): reader.write({}, {trained['run_id']: {'name': 'changed'}})
    assert open_store(trained['path']).run(trained['run_id']).name == 'digits'


def write_long_run(location, n_steps: int, spike_at: int) -> str:
    "A run of `n_steps` batch rows through the real background writer, with one loss spike."
    writer = Writer.for_store(location)
    run_id = f'long{n_steps}'
    start_synthetic_run(writer, run_id)
    loss = 2 * np.exp(-np.arange(n_steps) / n_steps) + 0.05 * np.sin(np.arange(n_steps))
    loss[spike_at] = 50.0
    for step in range(n_steps): writer.add_batch(batch_row(run_id, step, float(loss[step]), epoch=step // 1000))
    writer.end_run(run_id, 'finished')
    assert writer.flush(timeout=120)
    return run_id


def test_downsampling_a_long_run_keeps_spikes_and_the_last_point(tmp_path):
    store_path = tmp_path / 'long.db'
    run_id = write_long_run(store_path, 200_000, spike_at=123_457)
    store = open_store(store_path)
    down = store.batches_downsampled(run_id, n=2000)
    loss = down['series']['loss']
    assert len(loss['step']) <= 2001 and down['cursor'] == 199_999
    assert loss['step'] == sorted(loss['step'])
    assert loss['value'][loss['step'].index(123_457)] == 50.0
    assert loss['step'][-1] == 199_999
    raw = store.batches(run_id)
    assert min(loss['value']) == pytest.approx(min(raw['loss']))
    # A short run comes back whole.
    short = store.batches_downsampled(run_id, n=10**6)['series']['loss']
    assert short['step'] == raw['step']


def test_a_run_written_a_row_at_a_time_has_the_summaries_of_all_its_rows(tmp_path):
    """As the dashboard benchmark's live run: a run's writer writes its first rows, keeps it open, then writes the
    next ones one at a time, then its end. Every block summarises all of its rows, those of the first write too
    (a second `Store` writing the later ones would leave those out, and its blocks then clash with the writer's)."""
    store_path = tmp_path / 'live.db'
    writer, run_id = Writer.for_store(store_path), 'live'
    start_synthetic_run(writer, run_id)
    loss = np.random.default_rng(0).random(BLOCK_STEPS + 6)
    loss[3] = 50.0  # a spike in the first write
    for step in range(len(loss)):
        writer.add_batch(batch_row(run_id, step, float(loss[step])))
        if step >= 9: assert writer.flush()  # the first 10 rows, then each row written alone
    writer.end_run(run_id, 'finished')
    assert writer.flush()
    store = open_store(store_path)
    run = store.run(run_id)
    assert (run.status, run.lost_rows) == ('finished', 0)
    blocks = store.rows('batch_blocks', run_id)
    assert [(b.level, b.block, b.last_step) for b in blocks] == [(0, 0, BLOCK_STEPS - 1), (0, 1, len(loss) - 1)] + [
        (level, 0, len(loss) - 1) for level in range(1, BLOCK_LEVELS)]
    for b in blocks:
        first = b.block * block_span(b.level)
        rows = loss[first:b.last_step + 1]
        assert (b.loss_min, b.loss_min_step, b.loss_max, b.loss_max_step) == (
            rows.min(), first + rows.argmin(), rows.max(), first + rows.argmax())


def test_several_processes_record_into_one_file(tmp_path, digits_path):
    script = ('import sys; sys.path.insert(0, "tests"); from helpers import train; '
              'from fastwatch.demo.digits import digits_dls; '
              f'train(digits_dls({str(digits_path)!r}), {str(tmp_path / "shared.db")!r}, epochs=1)')
    procs = [subprocess.Popen([sys.executable, '-c', script], cwd=ROOT) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    store = open_store(tmp_path / 'shared.db')
    runs = store.runs()
    assert len(runs) == 2 and {r.status for r in runs} == {'finished'}
    assert [store.counts(r.id)['epochs'] for r in runs] == [2, 2]


def test_postgresql_store_records_and_reads_a_run(dls, postgres_url):
    learn = train(dls, postgres_url, epochs=1, name='on postgres')
    store = open_store(postgres_url, readonly=True)
    run = store.runs()[0]
    assert (run.name, run.status) == ('on postgres', 'finished')
    counts = store.counts(run.id)
    assert counts.pop('item_images') > 0 and counts.pop('system') >= 1  # thumbnails, samples: as the run went
    assert counts == {'batches': 2 * len(dls.train), 'epochs': 2, 'confusion': 2, 'top_losses': 32, 'alerts': 0,
                      'items': 2, 'item_epochs': 4, 'decisions': 0}
    assert store.epochs(run.id)[-1].metrics['error_rate'] == pytest.approx(learn.recorder.values[-1][2])
    assert store.confusion(run.id).matrix.sum() == len(dls.valid_ds)
    assert store.top_losses(run.id)[0].image[:4] == b'\x89PNG'
    with pytest.raises(Exception, match='read-only'): store.write({}, {run.id: {'name': 'x'}})


def test_postgresql_that_is_not_a_store_is_refused(postgres_url):
    engine = create_engine(postgres_url.replace('postgresql://', 'postgresql+psycopg://'))
    with engine.begin() as conn: conn.exec_driver_sql('CREATE TABLE notes (x int)')
    with pytest.raises(StoreError, match='is not a fastwatch store'): open_store(postgres_url)


def test_a_schema_1_store_is_upgraded_with_its_rows(tmp_path):
    "A store written by fastwatch 0.1 (schema 1: dense confusion counts, NOT NULL top-loss values) opens as schema 2."
    path = tmp_path / 'v1.db'
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_1)
    dense = np.array([[5, 1, 0], [0, 7, 2], [3, 0, 9]], dtype='<u4')
    conn.execute("INSERT INTO runs VALUES ('r1', 'old', 'finished', NULL, 1.0, 2.0, 2.0, '{}', '{}', "
                 "'[\"a\", \"b\", \"c\"]', 0)")
    conn.execute('INSERT INTO confusion VALUES (?, ?, ?, ?)', ('r1', 0, 3, zlib.compress(dense.tobytes())))
    conn.execute("INSERT INTO top_losses VALUES ('r1', 0, 0, 4, 'x.png', 'a', 'c', 0.9, 2.5, NULL, NULL, NULL)")
    conn.execute("INSERT INTO batches VALUES ('r1', 0, 0, 0, 0, 1.5, 1.5, 0.01, 0.9, 1.0)")
    conn.commit()
    conn.close()
    store = open_store(path)
    assert store.run('r1').name == 'old'
    np.testing.assert_array_equal(store.confusion('r1').matrix, dense)
    assert store.top_losses('r1')[0].loss == 2.5
    assert store.batches('r1')['loss'] == [1.5]
    store.write({'top_losses': [TopLossRow(run_id='r1', epoch=1, rank=0, item_index=0, item='y', actual='a',
                                           predicted='b', probability=None, loss=None, image=None, image_type=None,
                                           text=None)]})
    assert store.top_losses('r1', epoch=1)[0].loss is None
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM fastwatch_meta").fetchone() == (str(schema.SCHEMA_VERSION),)
    assert conn.execute('PRAGMA integrity_check').fetchone() == ('ok',)


SCHEMA_1 = """
CREATE TABLE fastwatch_meta (key VARCHAR(64) NOT NULL, value TEXT NOT NULL, PRIMARY KEY (key));
INSERT INTO fastwatch_meta VALUES ('schema_version', '1');
CREATE TABLE runs (id VARCHAR(32) NOT NULL, name TEXT, status VARCHAR(16) NOT NULL, error TEXT,
  created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL, heartbeat FLOAT NOT NULL, info TEXT NOT NULL,
  config TEXT NOT NULL, vocab TEXT, lost_rows INTEGER NOT NULL, PRIMARY KEY (id));
CREATE TABLE batches (run_id VARCHAR(32) NOT NULL, step INTEGER NOT NULL, epoch INTEGER NOT NULL,
  fit INTEGER NOT NULL, frozen BOOLEAN NOT NULL, loss FLOAT, smooth_loss FLOAT, lr FLOAT, mom FLOAT,
  time FLOAT NOT NULL, PRIMARY KEY (run_id, step)) WITHOUT ROWID;
CREATE TABLE batch_blocks (run_id VARCHAR(32) NOT NULL, level INTEGER NOT NULL, block INTEGER NOT NULL,
  last_step INTEGER NOT NULL, loss_min FLOAT, loss_min_step INTEGER, loss_max FLOAT, loss_max_step INTEGER,
  smooth_loss_min FLOAT, smooth_loss_min_step INTEGER, smooth_loss_max FLOAT, smooth_loss_max_step INTEGER,
  lr_min FLOAT, lr_min_step INTEGER, lr_max FLOAT, lr_max_step INTEGER, mom_min FLOAT, mom_min_step INTEGER,
  mom_max FLOAT, mom_max_step INTEGER, PRIMARY KEY (run_id, level, block)) WITHOUT ROWID;
CREATE TABLE epochs (run_id VARCHAR(32) NOT NULL, epoch INTEGER NOT NULL, fit INTEGER NOT NULL,
  frozen BOOLEAN NOT NULL, step INTEGER NOT NULL, train_loss FLOAT, valid_loss FLOAT, metrics TEXT NOT NULL,
  duration FLOAT NOT NULL, time FLOAT NOT NULL, PRIMARY KEY (run_id, epoch)) WITHOUT ROWID;
CREATE TABLE confusion (run_id VARCHAR(32) NOT NULL, epoch INTEGER NOT NULL, n_classes INTEGER NOT NULL,
  counts BLOB NOT NULL, PRIMARY KEY (run_id, epoch)) WITHOUT ROWID;
CREATE TABLE top_losses (run_id VARCHAR(32) NOT NULL, epoch INTEGER NOT NULL, rank INTEGER NOT NULL,
  item_index INTEGER NOT NULL, item TEXT NOT NULL, actual TEXT NOT NULL, predicted TEXT NOT NULL,
  probability FLOAT NOT NULL, loss FLOAT NOT NULL, image BLOB, image_type VARCHAR(32), text TEXT,
  PRIMARY KEY (run_id, epoch, rank)) WITHOUT ROWID;
"""


def test_an_older_store_whose_upgrades_add_tables_reads_as_it_is(trained, tmp_path):
    "A snapshot of schema 2 (before items, decisions, system samples) opens read-only: the tables it lacks read empty."
    old, added = tmp_path / 'schema2.db', {'items', 'item_epochs', 'item_images', 'decisions', 'system'}
    with sqlite3.connect(trained['path']) as source, sqlite3.connect(old) as target: source.backup(target)
    with sqlite3.connect(old) as conn:
        for table in added: conn.execute(f'DROP TABLE {table}')
        conn.execute("UPDATE fastwatch_meta SET value='2' WHERE key='schema_version'")
    store, run_id = open_store(old, readonly=True), trained['run_id']
    assert store.absent == added
    assert store.rows('item_epochs', run_id) == [] and store.counts(run_id)['decisions'] == 0
    assert store.counts(run_id)['batches'] == trained['store'].counts(run_id)['batches']
    rows, _ = store.rows_after(run_id, {})
    assert rows['items'] == [] and len(rows['epochs']) == 3
    write_snapshot(store, [run_id], tmp_path / 'copy.fastwatch')
    assert open_store(tmp_path / 'copy.fastwatch', readonly=True).counts(run_id)['epochs'] == 3
    open_store(old)  # opened for writing, it is upgraded
    assert open_store(old, readonly=True).absent == set()
