"""Snapshots: `fastwatch export RUN -o FILE` and `fastwatch import FILE`, on stores written by real trainings."""
from __future__ import annotations

import sqlite3

import pytest
from helpers import add_empty_run, cli
from sqlalchemy import select

from fastwatch import open_store
from fastwatch.cli import run_command
from fastwatch.store.tables import RUN_TABLES, runs


def run_rows(store, run_id: str) -> dict[str, list[tuple]]:
    "Every row of a run, table by table, in primary-key order."
    rows = {}
    with store.engine.connect() as conn:
        for table in (runs, *(entry.table for entry in RUN_TABLES.values())):
            key = table.c.id if table is runs else table.c.run_id
            rows[table.name] = [tuple(r) for r in conn.execute(
                select(table).where(key == run_id).order_by(*table.primary_key.columns))]
    return rows


def test_export_import_gives_identical_rows(trained, tmp_path, capsys):
    snapshot, merged = tmp_path / 'run.fastwatch', tmp_path / 'team.db'
    status, out, _ = cli(capsys, 'export', trained['run_id'], '-o', str(snapshot), '--store', str(trained['path']))
    assert status == 0 and str(snapshot) in out
    status, out, _ = cli(capsys, 'import', str(snapshot), '--store', str(merged))
    assert status == 0 and f"imported 1 run(s) into {merged}: {trained['run_id']}" in out
    expected = run_rows(trained['store'], trained['run_id'])
    assert all(expected[t] for t in ('runs', 'batches', 'batch_blocks', 'epochs', 'confusion', 'top_losses'))
    assert any(row.image for row in trained['store'].top_losses(trained['run_id']))  # thumbnails travel too
    for copy in (open_store(snapshot, readonly=True), open_store(merged, readonly=True)):
        assert run_rows(copy, trained['run_id']) == expected
        copy.close()


def test_snapshot_is_one_self_contained_file_that_opens_read_only(trained, tmp_path):
    snapshot = tmp_path / 'run.fastwatch'
    assert run_command('export', [trained['run_id'], '-o', str(snapshot), '--store', str(trained['path'])]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ['run.fastwatch']  # no -wal/-shm, no temporary files
    assert sqlite3.connect(snapshot).execute('PRAGMA journal_mode').fetchone()[0] == 'delete'
    snapshot.chmod(0o444)  # as a file in a read-only checkout
    store = open_store(snapshot, readonly=True)
    assert [run.id for run in store.runs()] == [trained['run_id']]
    assert store.confusion(trained['run_id']).matrix.sum() > 0
    store.close()


def test_importing_twice_adds_nothing_and_keeps_other_runs(trained, tmp_path, capsys):
    snapshot, merged = tmp_path / 'run.fastwatch', tmp_path / 'team.db'
    cli(capsys, 'export', trained['run_id'], '-o', str(snapshot), '--store', str(trained['path']))
    add_empty_run(merged, 'other')
    other = open_store(merged)
    cli(capsys, 'import', str(snapshot), '--store', str(merged))
    before = run_rows(other, trained['run_id'])
    status, out, _ = cli(capsys, 'import', str(snapshot), '--store', str(merged))
    assert status == 0 and 'imported 0 run(s)' in out and '1 already there' in out
    assert run_rows(other, trained['run_id']) == before
    assert sorted(run.id for run in other.runs()) == sorted(['other', trained['run_id']])
    other.close()


def test_snapshot_through_postgresql_and_back(trained, tmp_path, postgres_url, capsys):
    snapshot, back = tmp_path / 'run.fastwatch', tmp_path / 'back.fastwatch'
    cli(capsys, 'export', trained['run_id'], '-o', str(snapshot), '--store', str(trained['path']))
    assert cli(capsys, 'import', str(snapshot), '--store', postgres_url)[0] == 0
    assert cli(capsys, 'export', trained['run_id'], '-o', str(back), '--store', postgres_url)[0] == 0
    copy = open_store(back, readonly=True)
    assert run_rows(copy, trained['run_id']) == run_rows(trained['store'], trained['run_id'])
    copy.close()


@pytest.mark.parametrize('case', ['unknown run', 'existing output', 'directory output', 'no output'])
def test_export_refuses_bad_input_with_one_line(trained, tmp_path, capsys, case):
    out = tmp_path / 'run.fastwatch'
    out.write_bytes(b'precious')
    argv = {'unknown run': ['nosuchrun', '-o', str(tmp_path / 'new.fastwatch')],
            'existing output': [trained['run_id'], '-o', str(out)],
            'directory output': [trained['run_id'], '-o', str(tmp_path), '--force'],
            'no output': [trained['run_id']]}[case]
    status, stdout, err = cli(capsys, 'export', *argv, '--store', str(trained['path']))
    assert status == 1 and stdout == ''
    assert err.count('\n') == 1 and err.startswith('fastwatch export: ')
    message = {'unknown run': "no run 'nosuchrun'", 'existing output': 'exists: pass --force',
               'directory output': 'is a directory', 'no output': '-o'}[case]
    assert message in err
    assert out.read_bytes() == b'precious'
    assert [p.name for p in tmp_path.iterdir()] == ['run.fastwatch']


def test_force_replaces_an_existing_snapshot(trained, tmp_path, capsys):
    out = tmp_path / 'run.fastwatch'
    out.write_bytes(b'old')
    status, _, _ = cli(capsys, 'export', trained['run_id'], '-o', str(out), '--force', '--store', str(trained['path']))
    assert status == 0 and open_store(out, readonly=True).run(trained['run_id']).id == trained['run_id']


@pytest.mark.parametrize('content', [b'just some text\n', 'sqlite with other tables'])
def test_import_refuses_what_is_not_a_fastwatch_store(tmp_path, capsys, content):
    bogus, dest = tmp_path / 'bogus.fastwatch', tmp_path / 'dest.db'
    if isinstance(content, bytes): bogus.write_bytes(content)
    else:
        with sqlite3.connect(bogus) as conn: conn.execute('CREATE TABLE notes (text)')
    before = bogus.read_bytes()
    status, stdout, err = cli(capsys, 'import', str(bogus), '--store', str(dest))
    assert status == 1 and stdout == '' and err.count('\n') == 1
    assert err.startswith('fastwatch import: ') and str(bogus) in err
    assert not dest.exists() and bogus.read_bytes() == before


def test_importing_a_fuller_snapshot_adds_the_rows_the_store_lacks(trained, tmp_path, capsys):
    snapshot, merged = tmp_path / 'run.fastwatch', tmp_path / 'team.db'
    run_id = trained['run_id']
    cli(capsys, 'export', run_id, '-o', str(snapshot), '--store', str(trained['path']))
    cli(capsys, 'import', str(snapshot), '--store', str(merged))
    with sqlite3.connect(merged) as conn:  # as if imported from a snapshot taken mid-run
        for table in ('batches', 'epochs', 'confusion', 'top_losses'):
            after = 'step > 20' if table == 'batches' else 'epoch > 0'
            conn.execute(f'DELETE FROM {table} WHERE run_id = ? AND {after}', (run_id,))
        conn.execute("DELETE FROM batch_blocks WHERE run_id = ?", (run_id,))
        conn.execute("UPDATE runs SET status = 'running', updated_at = updated_at - 60 WHERE id = ?", (run_id,))
    store = open_store(merged)
    partial = run_rows(store, run_id)
    lacking = sum(len(rows) for rows in run_rows(trained['store'], run_id).values()) - sum(
        len(rows) for table, rows in partial.items() if table != 'runs')
    status, out, _ = cli(capsys, 'import', str(snapshot), '--store', str(merged))
    assert status == 0 and f'completed 1 run(s) with the rows they lacked: {run_id} (+{lacking})' in out
    assert run_rows(store, run_id) == run_rows(trained['store'], run_id)
    assert store.run(run_id).status == 'finished'
    # Importing it again changes nothing.
    status, out, _ = cli(capsys, 'import', str(snapshot), '--store', str(merged))
    assert status == 0 and 'imported 0 run(s)' in out and '1 already there' in out and 'completed' not in out
    assert run_rows(store, run_id) == run_rows(trained['store'], run_id)
    store.close()
