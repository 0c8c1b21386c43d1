"""`fastwatch export --format tensorboard|csv`: read back with TensorBoard's own reader and as fastai's CSV."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image
from test_snapshot import add_empty_run

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
        assert [s.step for s in scalars] == [e['epoch'] for e in epochs]
        expected = [e[name] if name in e else e['metrics'][name] for e in epochs]
        np.testing.assert_allclose([s.value for s in scalars], expected, rtol=1e-6)


def test_tensorboard_confusion_matrix_image_by_epoch(trained, events):
    store, run_id = trained['store'], trained['run_id']
    images = events.Images('confusion_matrix')
    assert [i.step for i in images] == [e['epoch'] for e in store.epochs(run_id) if store.confusion(run_id, e['epoch'])]
    png = Image.open(io.BytesIO(images[-1].encoded_image_string))
    n = len(store.confusion(run_id)['vocab'])
    assert png.size == (images[-1].width, images[-1].height) and png.width > n * 20


def test_csv_has_fastais_columns_and_every_epoch(trained, tmp_path):
    out = tmp_path / 'history.csv'
    assert export(trained, '--format', 'csv', '-o', str(out)) == 0
    header, *rows = list(csv.reader(out.open()))
    assert header == trained['recorder']['metric_names']  # what CSVLogger writes: epoch ... time
    epochs = trained['store'].epochs(trained['run_id'])
    assert [int(r[0]) for r in rows] == [e['epoch'] for e in epochs]
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
