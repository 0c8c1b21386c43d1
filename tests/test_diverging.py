"""Nothing a training produces stops recording: a diverging fit (NaN/inf losses) on the digits, and rows the
database refuses, on SQLite and PostgreSQL."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from fastai.callback.core import Callback
from fastai.interpret import ClassificationInterpretation

from fastwatch import WatchCallback, open_store
from fastwatch.demo.digits import digits_learner
from fastwatch.store.tables import EpochRow
from fastwatch.view.panels.epoch_panel import gallery_html

FASTWATCH = str(Path(sys.executable).parent / 'fastwatch')


@pytest.fixture(params=['sqlite', 'postgresql'])
def store_location(request, tmp_path):
    "A fresh store of each kind: a SQLite file, a PostgreSQL schema."
    return str(tmp_path / 'div.db') if request.param == 'sqlite' else request.getfixturevalue('postgres_url')


def fit(learn, *args, **kwargs) -> list[str]:
    "Fit; returns fastwatch's warnings."
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        learn.fit(*args, **kwargs)
    return [str(w.message) for w in caught if 'fastwatch' in str(w.message)]


def not_finite(value) -> bool: return value is None or not math.isfinite(value)


@pytest.fixture(scope='module')
def diverged(dls, tmp_path_factory):
    "`fit(2, lr=1e6)` on the digits CNN, recorded into a SQLite store: its losses become NaN."
    path = tmp_path_factory.mktemp('diverged') / 'div.db'
    learn = digits_learner(dls, cbs=WatchCallback(store=path))
    warned = fit(learn, 2, lr=1e6)
    store = open_store(path)
    return {'learn': learn, 'store': store, 'run': store.runs()[0], 'path': path, 'warned': warned}


def test_a_diverging_fit_is_recorded_to_its_last_batch(dls, store_location):
    learn = digits_learner(dls, cbs=WatchCallback(store=store_location))
    warned = fit(learn, 2, lr=1e6)
    assert warned == []
    store = open_store(store_location)
    [run] = store.runs()
    assert (run.status, run.error, run.lost_rows) == ('finished', None, 0)
    batches = store.batches(run.id)
    assert batches['step'] == list(range(2 * len(dls.train)))
    assert sum(map(not_finite, batches['loss'])) > len(dls.train)  # it did diverge
    epochs = store.epochs(run.id)
    assert [e.epoch for e in epochs] == [0, 1]
    assert all(math.isnan(e.train_loss) and math.isnan(e.valid_loss) for e in epochs)
    np.testing.assert_allclose([e.metrics['error_rate'] for e in epochs],
                               [float(v[2]) for v in learn.recorder.values])
    # Confusion and top losses of a NaN model are still fastai's: ClassificationInterpretation agrees.
    interp = ClassificationInterpretation.from_learner(learn)
    np.testing.assert_array_equal(store.confusion(run.id).matrix, interp.confusion_matrix())
    top = store.top_losses(run.id)
    assert len(top) == 16 and all(not_finite(t.loss) for t in top)  # NULL where the column cannot hold NaN
    assert [t.item_index for t in top] == interp.top_losses(16)[1].tolist()


class AddRows(Callback):
    "Hands the writer rows the database refuses, at the end of each epoch: a duplicate key, then a NOT NULL."
    order = WatchCallback.order + 1

    def after_epoch(self):
        watch = self.learn.watch
        row = EpochRow(watch.run_id, 0, 0, False, 0, 1.0, 1.0, {}, 1.0, 1.0)
        bad = row if self.epoch == 0 else row._replace(epoch=99, metrics=None)
        watch.writer.add_rows('epochs', [bad])


def test_a_refused_row_is_dropped_counted_and_named_once(dls, store_location):
    learn = digits_learner(dls, cbs=[WatchCallback(store=store_location), AddRows()])
    warned = fit(learn, 2)
    assert learn.watch.writer.flush(timeout=10)  # nothing is left to retry
    assert len(warned) == 1 and 'refused a row of epochs' in warned[0] and 'IntegrityError' in warned[0]
    assert ('UNIQUE constraint failed' in warned[0]) or ('duplicate key' in warned[0])
    store = open_store(store_location)
    [run] = store.runs()
    assert (run.status, run.lost_rows) == ('finished', 2)
    # The other rows went on: every batch and the two real epochs, with fastai's values.
    assert store.batches(run.id)['step'] == list(range(2 * len(dls.train)))
    epochs = store.epochs(run.id)
    assert [e.epoch for e in epochs] == [0, 1]
    np.testing.assert_allclose([[e.train_loss, e.valid_loss] for e in epochs],
                               [[float(v[0]), float(v[1])] for v in learn.recorder.values], rtol=1e-6)
    assert store.counts(run.id)['top_losses'] == 32


def test_cli_and_dashboard_show_nan_as_nan(diverged):
    run_id, path = diverged['run'].id, str(diverged['path'])
    out = subprocess.run([FASTWATCH, 'show', run_id, '--store', path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'final: train_loss nan, valid_loss nan, error_rate' in out.stdout
    shown = subprocess.run([FASTWATCH, 'show', run_id, '--store', path, '--json'], capture_output=True, text=True,
                           timeout=120).stdout

    def strict(constant): raise ValueError(f'not JSON: {constant}')
    # Valid JSON (no NaN literal): non-finite numbers are the strings "nan", "inf", "-inf".
    parsed = json.loads(shown, parse_constant=strict)
    assert [(e['train_loss'], e['valid_loss']) for e in parsed['epochs']] == [('nan', 'nan')] * 2
    html = gallery_html(diverged['store'].top_losses(run_id))
    assert html.count('loss nan') == 16
