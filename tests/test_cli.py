"""`fastwatch ls` and `fastwatch show`, run as the installed console script."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

FASTWATCH = str(Path(sys.executable).parent / 'fastwatch')  # the console script of this environment


def fastwatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FASTWATCH, *args], capture_output=True, text=True, timeout=120)


def test_ls_lists_runs_newest_first(trained):
    out = fastwatch('ls', '--store', str(trained['path']))
    assert out.returncode == 0
    header, row = out.stdout.splitlines()
    assert header.split() == ['run', 'state', 'started', 'duration', 'epochs', 'valid_loss', 'error_rate', 'name']
    assert row.split()[:2] == [trained['run_id'], 'finished'] and row.split()[-1] == 'digits'
    listed = json.loads(fastwatch('ls', '--store', str(trained['path']), '--json').stdout)
    assert [(r['id'], r['state'], r['name']) for r in listed] == [(trained['run_id'], 'finished', 'digits')]


def test_show_prints_epochs_final_metrics_and_counts(trained):
    store, run_id = trained['store'], trained['run_id']
    out = fastwatch('show', run_id, '--store', str(trained['path']))
    assert out.returncode == 0, out.stderr
    last = store.epochs(run_id)[-1]
    assert 'state: finished' in out.stdout
    assert f"final: train_loss {last.train_loss:.6g}, valid_loss {last.valid_loss:.6g}, " \
           f"error_rate {last.metrics['error_rate']:.6g}" in out.stdout
    counts = store.counts(run_id)
    assert f"recorded: {counts['batches']} batches, 3 epochs, 3 confusion, 48 top_losses" in out.stdout
    shown = json.loads(fastwatch('show', run_id, '--store', str(trained['path']), '--json').stdout)
    assert shown['counts'] == counts and [e['epoch'] for e in shown['epochs']] == [0, 1, 2]
    n_train = len(trained['learn'].dls.train_ds)  # each epoch's throughput: its training items over its seconds
    assert 'items/s' in out.stdout.split('final:')[0]
    assert [e['items_per_second'] for e in shown['epochs']] == [n_train / e.duration for e in store.epochs(run_id)]


def test_fastwatch_store_variable_names_the_default_store(trained, monkeypatch):
    monkeypatch.setenv('FASTWATCH_STORE', str(trained['path']))
    assert trained['run_id'] in fastwatch('ls').stdout


def one_line_error(out: subprocess.CompletedProcess, command: str, message: str) -> None:
    assert out.returncode != 0 and out.stdout == ''
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith(f'fastwatch {command}: ') and message in out.stderr


def test_bad_input_is_one_clear_line(trained, tmp_path):
    one_line_error(fastwatch('show', 'nosuchrun', '--store', str(trained['path'])), 'show',
                   "no run 'nosuchrun'")
    one_line_error(fastwatch('ls', '--store', str(tmp_path / 'missing.db')), 'ls', 'no fastwatch store at')
    assert not (tmp_path / 'missing.db').exists()
    sqlite3.connect(tmp_path / 'other.db').execute('CREATE TABLE t (x)')
    one_line_error(fastwatch('ls', '--store', str(tmp_path / 'other.db')), 'ls', 'is not a fastwatch store')
    (tmp_path / 'notes.txt').write_text('not a database at all ' * 50)
    one_line_error(fastwatch('show', 'x', '--store', str(tmp_path / 'notes.txt')), 'show', 'cannot open store')
    one_line_error(fastwatch('serve', '--store', str(trained['path']), '--max-viewers', '-1'), 'serve',
                   '--max-viewers takes a number of pages, not -1')


def test_unknown_command_and_help():
    out = fastwatch('frobnicate')
    assert out.returncode == 2 and "unknown command 'frobnicate'" in out.stderr
    help_text = fastwatch('--help').stdout
    assert 'ls ' in help_text and 'show ' in help_text
    assert '--json' in fastwatch('ls', '--help').stdout


def test_names_with_terminal_escapes_are_printed_escaped(tmp_path, capsys):
    "A run name (or error) with escape sequences cannot drive the user's terminal through `ls` or `show`."
    from fastwatch.cli import run_command
    from fastwatch.store import RunRecord, open_store
    path = tmp_path / 'escapes.db'
    name = 'evil\x1b]0;pwned\x07\x1b[2J name'
    open_store(path).write({'runs': [RunRecord('r1', name, 'failed', 1.0, 2.0, 2.0, error='boom\x1b[31m')]})
    for command in (['ls'], ['show', 'r1']):
        assert run_command(command[0], [*command[1:], '--store', str(path)]) == 0
        out = capsys.readouterr().out
        assert '\x1b' not in out and '\x07' not in out
        assert r'evil\x1b]0;pwned\x07\x1b[2J name' in out


def test_ls_compares_runs_final_and_best_metrics_settings_sorted_by_any_column(dls, tmp_path, capsys):
    from helpers import cli, train
    path = tmp_path / 'runs.db'
    learners = [train(dls, path, epochs=2, name=f'lr {lr}', config={'lr': lr, 'arch': 'cnn'}) for lr in (1e-2, 1e-1)]
    status, out, _ = cli(capsys, 'ls', '--store', str(path), '--json')
    listed = json.loads(out)
    assert status == 0 and [r['name'] for r in listed] == ['lr 0.1', 'lr 0.01']  # newest first
    for row, learn in zip(listed, learners[::-1]):
        errors = [values[2] for values in learn.recorder.values]  # the second fit's epochs, as the Recorder kept
        assert row['error_rate'] == pytest.approx(errors[-1]) and row['epochs'] == 3 == row['planned_epochs']
        assert row['best_error_rate'] <= min(errors) + 1e-9 and row['config.lr'] in (1e-2, 1e-1)
        assert row['best_error_rate_epoch'] in (0, 1, 2) and row['id'] == row['run'] == learn.watch.run_id
        assert (row['model'], row['batch_size'], row['n_train']) == ('Sequential', 64, len(dls.train_ds))
    status, out, _ = cli(capsys, 'ls', '--store', str(path), '--columns', 'name,config.lr,error_rate',
                         '--sort=-config.lr')
    lines = out.splitlines()
    assert status == 0 and lines[0].split() == ['name', 'config.lr', 'error_rate'] and len(lines) == 3
    assert lines[1].startswith('lr 0.1') and lines[2].startswith('lr 0.01')
    status, out, _ = cli(capsys, 'ls', '--store', str(path), '--columns', 'name', '--sort', 'error_rate')
    by_error = sorted(listed, key=lambda r: r['error_rate'])
    assert [line.strip() for line in out.splitlines()[1:]] == [r['name'] for r in by_error]
    status, out, err = cli(capsys, 'ls', '--store', str(path), '--columns', 'name,nope')
    assert status == 1 and not out and "no column 'nope'" in err and err.count('\n') == 1
    status, out, err = cli(capsys, 'ls', '--store', str(path), '--sort', 'nope')
    assert status == 1 and "--sort takes a column" in err
