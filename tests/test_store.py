"""The store: schema and its checks, the read API, downsampling, SQLite WAL and PostgreSQL."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import train
from sqlalchemy import create_engine

from fastwatch import RunNotFound, StoreError, open_store
from fastwatch.record.writer import Writer
from fastwatch.store import schema

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
    assert open_store(trained['path']).run(trained['run_id'])['name'] == 'digits'


def write_long_run(location, n_steps: int, spike_at: int) -> str:
    "A run of `n_steps` batch rows through the real background writer, with one loss spike."
    writer = Writer.for_store(location)
    run_id = f'long{n_steps}'
    now = time.time()
    writer.start_run({'id': run_id, 'name': None, 'status': 'running', 'error': None, 'created_at': now,
                      'updated_at': now, 'heartbeat': now, 'info': '{}', 'config': '{}', 'vocab': None,
                      'lost_rows': 0})
    loss = 2 * np.exp(-np.arange(n_steps) / n_steps) + 0.05 * np.sin(np.arange(n_steps))
    loss[spike_at] = 50.0
    for step in range(n_steps):
        writer.add_batch((run_id, step, step // 1000, 0, False, loss[step], loss[step], 1e-3, 0.9, now))
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


def test_several_processes_record_into_one_file(tmp_path, digits_path):
    script = ('import sys; sys.path.insert(0, "tests"); from conftest import train; '
              'from fastwatch.demo.digits import digits_dls; '
              f'train(digits_dls({str(digits_path)!r}), {str(tmp_path / "shared.db")!r}, epochs=1)')
    procs = [subprocess.Popen([sys.executable, '-c', script], cwd=ROOT) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    store = open_store(tmp_path / 'shared.db')
    runs = store.runs()
    assert len(runs) == 2 and {r['status'] for r in runs} == {'finished'}
    assert [store.counts(r['id'])['epochs'] for r in runs] == [2, 2]


def test_postgresql_store_records_and_reads_a_run(dls, postgres_url):
    learn = train(dls, postgres_url, epochs=1, name='on postgres')
    store = open_store(postgres_url, readonly=True)
    run = store.runs()[0]
    assert (run['name'], run['status']) == ('on postgres', 'finished')
    assert store.counts(run['id']) == {'batches': 2 * len(dls.train), 'epochs': 2, 'confusion': 2,
                                       'top_losses': 32}
    assert store.epochs(run['id'])[-1]['metrics']['error_rate'] == pytest.approx(learn.recorder.values[-1][2])
    assert store.confusion(run['id'])['matrix'].sum() == len(dls.valid_ds)
    assert store.top_losses(run['id'])[0]['image'][:4] == b'\x89PNG'
    with pytest.raises(Exception, match='read-only'): store.write({}, {run['id']: {'name': 'x'}})


def test_postgresql_that_is_not_a_store_is_refused(postgres_url):
    engine = create_engine(postgres_url.replace('postgresql://', 'postgresql+psycopg://'))
    with engine.begin() as conn: conn.exec_driver_sql('CREATE TABLE notes (x int)')
    with pytest.raises(StoreError, match='is not a fastwatch store'): open_store(postgres_url)
