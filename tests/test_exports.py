"""`fastwatch export --format tensorboard|csv`: read back with TensorBoard's own reader and as fastai's CSV."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import add_empty_run
from PIL import Image

from fastwatch.cli import run_command

pytest.importorskip('tensorboard')
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def export(trained, *argv: str) -> int:
    return run_command('export', [trained['run_id'], *argv, '--store', str(trained['path'])])


@pytest.fixture(scope='module')
def events(trained, tmp_path_factory):
    "The run exported as TensorBoard event files, loaded by TensorBoard's event reader (every event kept)."
    logdir = tmp_path_factory.mktemp('tensorboard')
    assert export(trained, '--format', 'tensorboard', str(logdir)) == 0  # as in: RUN --format tensorboard DIR
    reader = EventAccumulator(str(logdir / trained['run_id']), size_guidance={'scalars': 0, 'images': 0})
    return reader.Reload()


def test_tensorboard_batch_scalars_by_global_step(trained, events):
    batches = trained['store'].batches(trained['run_id'])
    for name in ('loss', 'smooth_loss', 'lr'):
        scalars = events.Scalars(f'batch/{name}')
        assert [s.step for s in scalars] == batches['step']
        np.testing.assert_allclose([s.value for s in scalars], batches[name], rtol=1e-6)  # stored as float32
    assert [s.wall_time for s in events.Scalars('batch/loss')] == pytest.approx(batches['time'])


def test_tensorboard_epoch_metrics_by_epoch(trained, events):
    epochs = trained['store'].epochs(trained['run_id'])
    assert len(epochs) == 3  # fine_tune(2): the frozen epoch and both unfrozen ones, on one axis
    for name in ('train_loss', 'valid_loss', 'error_rate'):
        scalars = events.Scalars(f'epoch/{name}')
        assert [s.step for s in scalars] == [e.epoch for e in epochs]
        expected = [getattr(e, name) if name in e._fields else e.metrics[name] for e in epochs]
        np.testing.assert_allclose([s.value for s in scalars], expected, rtol=1e-6)


def test_tensorboard_confusion_matrix_image_by_epoch(trained, events):
    store, run_id = trained['store'], trained['run_id']
    images = events.Images('confusion_matrix')
    assert [i.step for i in images] == [e.epoch for e in store.epochs(run_id) if store.confusion(run_id, e.epoch)]
    png = Image.open(io.BytesIO(images[-1].encoded_image_string))
    n = len(store.confusion(run_id).vocab)
    assert png.size == (images[-1].width, images[-1].height) and png.width > n * 20


def test_csv_has_fastais_columns_and_every_epoch(trained, tmp_path):
    out = tmp_path / 'history.csv'
    assert export(trained, '--format', 'csv', '-o', str(out)) == 0
    header, *rows = list(csv.reader(out.open()))
    assert header == trained['recorder']['metric_names']  # what CSVLogger writes: epoch ... time
    epochs = trained['store'].epochs(trained['run_id'])
    assert [int(r[0]) for r in rows] == [e.epoch for e in epochs]
    # fastai's Recorder keeps the last fit: the last rows match its values
    recorded = np.array(trained['recorder']['values'])
    np.testing.assert_allclose(np.array([[float(v) for v in r[1:-1]] for r in rows])[-len(recorded):], recorded,
                               rtol=1e-6)
    assert all(len(r[-1].split(':')) == 2 for r in rows)  # mm:ss, as fastai prints time


def test_csv_takes_one_run(trained, tmp_path, capsys):
    two = tmp_path / 'two.fastwatch'
    assert export(trained, '-o', str(two)) == 0
    add_empty_run(two, 'other')
    assert run_command('export', [trained['run_id'], 'other', '--format', 'csv', '-o', str(tmp_path / 'h.csv'),
                                  '--store', str(two)]) == 1
    assert capsys.readouterr().err == 'fastwatch export: csv export takes one run, not 2\n'
    assert not (tmp_path / 'h.csv').exists()


@pytest.mark.parametrize('case', ['existing csv', 'existing tensorboard run', 'unknown format'])
def test_export_refuses_bad_input(trained, tmp_path, capsys, case):
    existing = tmp_path / 'history.csv'
    existing.write_text('precious')
    (tmp_path / 'tb' / trained['run_id']).mkdir(parents=True)
    (tmp_path / 'tb' / trained['run_id'] / 'keep').write_text('precious')
    argv = {'existing csv': ['--format', 'csv', '-o', str(existing)],
            'existing tensorboard run': ['--format', 'tensorboard', '-o', str(tmp_path / 'tb')],
            'unknown format': ['--format', 'parquet', '-o', str(tmp_path / 'x')]}[case]
    assert export(trained, *argv) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('fastwatch export: ')
    assert existing.read_text() == 'precious'
    assert (tmp_path / 'tb' / trained['run_id'] / 'keep').read_text() == 'precious'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['history.csv', 'tb']


def test_two_runs_and_no_output_is_refused_not_written_to_the_second(trained, tmp_path, capsys, monkeypatch):
    two = tmp_path / 'two.fastwatch'
    assert export(trained, '-o', str(two)) == 0
    add_empty_run(two, 'other')
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert run_command('export', [trained['run_id'], 'other', '--format', 'tensorboard', '--store', str(two)]) == 1
    assert capsys.readouterr().err == 'fastwatch export: give the output with -o\n'
    assert not (tmp_path / 'other').exists() and not [p for p in tmp_path.iterdir() if p.is_dir()]


# Reads the target as fast as it can until told to stop: how often it was missing, and what it found (a folder's
# number of files, a file's size) while it was the target (a reader that opened the old one as it was swapped out
# reads it as it is removed).
WATCH = """import os, sys
target, seen, missing = sys.argv[1], set(), 0
print('watching', flush=True)
while not os.path.exists(sys.argv[2]):
    try:
        fd = os.open(target, os.O_RDONLY)
        try:
            found = str(len(os.listdir(fd))) if os.path.isdir(target) else os.fstat(fd).st_size
            if os.stat(target).st_ino == os.fstat(fd).st_ino: seen.add(found)
        finally: os.close(fd)
    except FileNotFoundError: missing += 1
print(missing, sorted(seen))
"""


@pytest.mark.parametrize('format', ['tensorboard', 'snapshot'])
def test_force_replaces_a_target_in_one_step(trained, tmp_path, format):
    "Another process that reads the target while it is replaced again and again never finds it missing or partial."
    if format == 'tensorboard':
        target = tmp_path / 'tb' / trained['run_id']
        argv = ['--format', 'tensorboard', '-o', str(tmp_path / 'tb')]
    else:
        target = tmp_path / 'run.fastwatch'
        argv = ['-o', str(target)]
    assert export(trained, *argv) == 0
    whole = str(len(os.listdir(target))) if target.is_dir() else target.stat().st_size
    stop = tmp_path / 'stop'
    watcher = subprocess.Popen([sys.executable, '-c', WATCH, str(target), str(stop)], stdout=subprocess.PIPE, text=True)
    assert watcher.stdout.readline() == 'watching\n'
    for _ in range(10): assert export(trained, *argv, '--force') == 0
    stop.touch()
    assert watcher.stdout.read() == f'0 {[whole]}\n'  # never missing, only ever the whole export
    assert watcher.wait(timeout=10) == 0
