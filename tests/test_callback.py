"""WatchCallback against real fastai trainings on the digits, with fastai's own results as the oracle."""
from __future__ import annotations

import io
import re
import warnings

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.tracker import EarlyStoppingCallback
from fastai.interpret import ClassificationInterpretation
from fastai.vision.all import (
    BCEWithLogitsLossFlat,
    DataBlock,
    ImageBlock,
    Learner,
    MSELossFlat,
    MultiCategoryBlock,
    RegressionBlock,
    Resize,
    accuracy_multi,
    get_image_files,
    parent_label,
    rmse,
)
from helpers import train
from PIL import Image

from fastwatch import WatchCallback, open_store
from fastwatch.demo.digits import digits_dls, digits_learner, small_cnn
from fastwatch.record.thumbnails import thumbnail_png


def test_fine_tune_is_one_run_with_steps_counting_on(trained, dls):
    store, run_id = trained['store'], trained['run_id']
    assert len(store.runs()) == 1
    batches = store.batches(run_id)
    n_batches = len(dls.train)
    assert batches['step'] == list(range(3 * n_batches))
    assert batches['epoch'] == [e for e in range(3) for _ in range(n_batches)]
    assert batches['fit'] == [0] * n_batches + [1] * 2 * n_batches
    assert batches['frozen'] == [True] * n_batches + [False] * 2 * n_batches
    # The second fit's per-batch series are exactly what fastai's Recorder kept.
    second = slice(n_batches, None)
    np.testing.assert_allclose(batches['smooth_loss'][second], trained['recorder']['losses'], rtol=1e-6)
    np.testing.assert_allclose(batches['lr'][second], trained['recorder']['lrs'], rtol=1e-12)
    assert all(m is not None for m in batches['mom'])


def test_epochs_hold_every_metric_the_recorder_reports(trained, dls):
    store, run_id = trained['store'], trained['run_id']
    epochs = store.epochs(run_id)
    assert [(e.epoch, e.fit, e.frozen) for e in epochs] == [(0, 0, True), (1, 1, False), (2, 1, False)]
    for epoch, values in zip(epochs[1:], trained['recorder']['values']):  # values: train_loss, valid_loss, error_rate
        np.testing.assert_allclose([epoch.train_loss, epoch.valid_loss, epoch.metrics['error_rate']],
                                   values, rtol=1e-6)
        assert epoch.duration > 0
    assert [e.step for e in epochs] == [(i + 1) * len(dls.train) - 1 for i in range(3)]


def test_run_record_describes_the_training(trained):
    run = trained['store'].run(trained['run_id'])
    assert re.fullmatch(r'[a-z2-7]{13}', run.id)
    assert (run.status, run.state, run.name, run.config) == ('finished', 'finished', 'digits',
                                                                          {'purpose': 'tests'})
    info, learn = run.info, trained['learn']
    assert info.n_params == sum(p.numel() for p in learn.model.parameters())
    assert (info.n_train, info.n_valid, info.batch_size) == (len(learn.dls.train_ds), len(learn.dls.valid_ds), 64)
    assert info.metric_names == ['error_rate'] and info.planned_epochs == 3
    assert [(f.n_epoch, f.frozen) for f in info.fits] == [(1, True), (2, False)]
    assert info.torch == torch.__version__ and info.model == 'Sequential'
    assert run.vocab == [str(v) for v in learn.dls.vocab]
    assert run.heartbeat >= run.created_at and run.lost_rows == 0


def test_confusion_and_top_losses_equal_classification_interpretation(trained):
    store, run_id, learn = trained['store'], trained['run_id'], trained['learn']
    interp = ClassificationInterpretation.from_learner(learn)
    confusion = store.confusion(run_id)
    assert confusion.epoch == 2 and confusion.vocab == list(learn.dls.vocab)
    np.testing.assert_array_equal(confusion.matrix, interp.confusion_matrix())
    losses, idxs = interp.top_losses(16)
    top = store.top_losses(run_id)
    assert [t.item_index for t in top] == idxs.tolist()
    np.testing.assert_allclose([t.loss for t in top], losses.tolist(), rtol=1e-5)
    _, preds, targs, decoded, _ = interp[idxs]
    vocab, valid_items = learn.dls.vocab, learn.dls.valid.items
    for t, i, pred, targ, dec in zip(top, idxs.tolist(), preds, targs, decoded):
        assert t.actual == vocab[targ] and t.predicted == vocab[dec]
        assert t.probability == pytest.approx(pred.max().item(), rel=1e-5)
        assert t.item == str(valid_items[i].relative_to(learn.dls.path))
        image = Image.open(io.BytesIO(t.image))
        assert t.image_type == 'image/png' and image.size == (16, 16)  # the digits' size: below 128, kept
    assert [store.confusion(run_id, epoch).epoch for epoch in range(3)] == [0, 1, 2]
    assert store.counts(run_id)['confusion'] == 3
    assert len(store.top_losses(run_id, epoch=0)) == 16


def test_thumbnail_shows_the_decoded_input(trained):
    top = trained['store'].top_losses(trained['run_id'])[0]
    resized = trained['learn'].dls.valid.do_item(top.item_index)[0]  # fastai's item transforms (Resize)
    thumbnail = Image.open(io.BytesIO(top.image)).convert('RGB').resize((16, 16), Image.Resampling.NEAREST)
    np.testing.assert_array_equal(np.asarray(thumbnail), resized.permute(1, 2, 0).numpy())


def test_thumbnails_scale_large_images_down_and_keep_small_ones():
    large, small = np.zeros((200, 300, 3), np.uint8), np.zeros((16, 12), np.uint8)
    assert Image.open(io.BytesIO(thumbnail_png(large, 128))).size == (128, 85)
    assert Image.open(io.BytesIO(thumbnail_png(small, 128))).size == (12, 16)


def test_thumbnails_come_from_the_pass_without_reloading_items(digits_path, tmp_path):
    "The top-loss items' images are kept from the validation pass: no item goes through the data pipeline again."
    dls = digits_dls(digits_path)
    loaded, do_item = [], dls.valid.do_item
    dls.valid.do_item = lambda i: loaded.append(i) or do_item(i)
    # The suspects' thumbnails (`dynamics`) are reloaded items, a few an epoch: left out here.
    learn = train(dls, tmp_path / 'kept.db', epochs=1, dynamics=False)
    assert len(loaded) == 2 * len(dls.valid_ds)  # fine_tune(1) validates twice, and loads nothing more
    top = open_store(tmp_path / 'kept.db').top_losses(learn.watch.run_id)
    assert len(top) == 16 and all(t.image[:4] == b'\x89PNG' for t in top)


def test_no_extra_forward_pass(dls, tmp_path):
    learn = digits_learner(dls, cbs=WatchCallback(store=tmp_path / 'f.db'))
    calls = []
    learn.model.register_forward_hook(lambda *_: calls.append(1))
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(1)
    assert len(calls) == 2 * (len(dls.train) + len(dls.valid))


def test_lr_find_get_preds_validate_and_interpretation_record_nothing(dls, tmp_path):
    path = tmp_path / 'quiet.db'
    learn = digits_learner(dls, cbs=WatchCallback(store=path))
    with learn.no_bar(), learn.no_logging():
        learn.lr_find(num_it=10, show_plot=False)
        learn.get_preds()
        learn.validate()
        ClassificationInterpretation.from_learner(learn).top_losses(3)
        learn.show_results(max_n=2)
    assert not path.exists()
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(1)
    store = open_store(path)
    assert [r.status for r in store.runs()] == ['finished']
    assert len(store.epochs(store.runs()[0].id)) == 2


def test_reusing_the_callback_makes_a_second_run(dls, tmp_path):
    learn = train(dls, tmp_path / 'two.db', epochs=1)
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(1)
    runs = open_store(tmp_path / 'two.db').runs()
    assert len(runs) == 2 and runs[0].id != runs[1].id and {r.status for r in runs} == {'finished'}


def test_early_stopping_finishes_the_run(dls, tmp_path):
    stop = EarlyStoppingCallback(monitor='valid_loss', min_delta=100, patience=0)
    learn = digits_learner(dls, cbs=[WatchCallback(store=tmp_path / 'es.db'), stop])
    with learn.no_bar(), learn.no_logging(): learn.fit(5)
    store = open_store(tmp_path / 'es.db')
    run = store.runs()[0]
    assert run.status == 'finished' and len(store.epochs(run.id)) == 2


class Boom(Callback):
    def after_batch(self):
        if self.training and self.iter == 3: raise ValueError('boom')


def test_an_exception_ends_the_run_as_failed(dls, tmp_path):
    learn = digits_learner(dls, cbs=[WatchCallback(store=tmp_path / 'boom.db'), Boom()])
    with pytest.raises(ValueError), learn.no_bar(), learn.no_logging(): learn.fit(1)
    learn.watch.writer.flush()
    # The probe notices within a second that the fit is gone; the next fit would notice at once.
    learn.remove_cb(Boom)
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    runs = open_store(tmp_path / 'boom.db').runs()
    assert [r.status for r in runs] == ['finished', 'failed']
    # Boom (order 0) raises before WatchCallback records the batch it fails in.
    assert open_store(tmp_path / 'boom.db').batches(runs[1].id)['step'] == [0, 1, 2]


def test_multi_label_and_regression_record_losses_without_confusion(digits_path, tmp_path):
    multi = DataBlock(blocks=(ImageBlock, MultiCategoryBlock),
                      get_y=lambda p: [parent_label(p), 'even' if int(parent_label(p)) % 2 == 0 else 'odd'],
                      item_tfms=Resize(16))
    regression = DataBlock(blocks=(ImageBlock, RegressionBlock), get_y=lambda p: float(parent_label(p)),
                           item_tfms=Resize(16))
    cases = [(multi, BCEWithLogitsLossFlat(), accuracy_multi, 12), (regression, MSELossFlat(), rmse, 1)]
    for block, loss, metric, n_out in cases:
        dls = block.dataloaders(get_image_files(digits_path), bs=64, num_workers=0)
        learn = Learner(dls, small_cnn(n_out), loss_func=loss, metrics=metric,
                        cbs=WatchCallback(store=tmp_path / 'other.db'))
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
        store = open_store(tmp_path / 'other.db')
        run = store.runs()[0]
        assert run.status == 'finished'
        assert learn.recorder.metric_names[3] in store.epochs(run.id)[0].metrics
        counts = store.counts(run.id)
        counts.pop('system')  # samples of the process: none in a run shorter than the writer's first commit
        assert counts == {**dict.fromkeys(counts, 0), 'batches': len(dls.train), 'epochs': 1}


def test_export_keeps_working(trained, tmp_path):
    learn = trained['learn']
    learn.path = tmp_path
    learn.export('model.pkl')
    assert (tmp_path / 'model.pkl').stat().st_size > 0


@pytest.mark.parametrize('kwargs, message', [({'top_k': -1}, 'top_k must be 0 or more'),
                                             ({'thumb_size': 0}, 'thumb_size must be at least 1'),
                                             ({'config': [1, 2]}, 'config must be a dict')])
def test_bad_arguments_are_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message): WatchCallback(**kwargs)


def test_plain_tensor_data_without_vocab_records_confusion_and_text_items(tmp_path):
    from fastai.data.core import DataLoaders
    from sklearn.datasets import load_digits
    digits = load_digits()
    items = list(zip(torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)))
    dls = DataLoaders.from_dsets(items[:1400], items[1400:], bs=64, num_workers=0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    learn = Learner(dls, model, loss_func=torch.nn.CrossEntropyLoss(), cbs=WatchCallback(store=tmp_path / 't.db'))
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('error', RuntimeWarning)  # recording must not stop with a warning
        learn.fit(1)
    store = open_store(tmp_path / 't.db')
    run = store.runs()[0]
    assert run.status == 'finished' and run.vocab is None
    confusion = store.confusion(run.id)
    assert confusion.vocab == [str(i) for i in range(10)] and confusion.matrix.sum() == len(items) - 1400
    top = store.top_losses(run.id)
    assert len(top) == 16 and all(t.image is None and t.text.startswith('tensor(') for t in top)
    assert {t.actual for t in top} <= set(confusion.vocab)


class GroupLRs(Callback):
    "Keeps every parameter group's lr of each training batch, as fastai's scheduler set it."
    def __init__(self): self.lrs = []

    def after_batch(self):
        if self.training: self.lrs.append([h['lr'] for h in self.learn.opt.hypers])


def test_every_parameter_groups_lr_is_recorded(dls, tmp_path):
    groups = GroupLRs()
    learn = train(dls, tmp_path / 'lrs.db', epochs=1, extra_cbs=[groups])  # fine_tune: slice(base_lr / 100, base_lr)
    store = open_store(tmp_path / 'lrs.db')
    batches = store.batches(store.runs()[0].id)
    assert len(learn.opt.hypers) == 2 and len(batches['lrs']) == len(groups.lrs) == 2 * len(dls.train)
    np.testing.assert_allclose(batches['lrs'], groups.lrs, rtol=1e-12)
    np.testing.assert_allclose(batches['lr'], [lrs[-1] for lrs in groups.lrs], rtol=1e-12)
    assert all(lo < hi for lo, hi in batches['lrs'])  # discriminative: the body learns slower than the head


def fit_printing(learn, capsys) -> str:
    "Fit once; everything it printed and warned, in one string."
    with learn.no_bar(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        learn.fit(1)
        learn.watch.writer.flush(timeout=5)
    out = capsys.readouterr()
    return '\n'.join([out.out, out.err, *(str(w.message) for w in caught)])


def test_the_store_password_never_appears_in_output(dls, postgres_url, capsys):
    from fastwatch.store import hide_password
    learn = digits_learner(dls, cbs=WatchCallback(store=postgres_url))  # its password is `fastwatch`
    printed = fit_printing(learn, capsys)
    assert 'fastwatch: recording run' in printed and ':***@127.0.0.1' in printed and ':fastwatch@' not in printed
    assert open_store(postgres_url).runs()[0].status == 'finished'
    for secret, url in [('s3cret-pw', 'postgresql://fastwatch:s3cret-pw@127.0.0.1:1/nowhere'),  # unreachable
                        ('wrong-s3cret', postgres_url.replace(':fastwatch@', ':wrong-s3cret@'))]:  # refused
        learn = digits_learner(dls, cbs=WatchCallback(store=url))
        printed = fit_printing(learn, capsys)
        assert 'cannot write to the store' in printed and ':***@127.0.0.1' in printed and secret not in printed
    # libpq's connection strings name it too, in messages a driver may pass on.
    assert hide_password("password=s3cret-pw host=x 'password = \"s3cret-pw\"'", 'postgresql://u:s3cret-pw@h/d') \
        == "password=*** host=x 'password = \"***\"'"


def test_the_metrics_are_those_the_recorder_logged_in_its_order(dls, tmp_path):
    "With `train_metrics`, custom `AccumMetric`s and `ValueMetric`s, the run has what the Recorder logged."
    from fastai.learner import ValueMetric
    from fastai.metrics import AccumMetric, accuracy, error_rate

    from fastwatch.view.feed import RunFeed
    from fastwatch.view.panels.chart_grid import charts_for

    def top_class_share(preds, targs): return (preds.argmax(1) == 0).float().mean()
    custom = AccumMetric(top_class_share, flatten=False)
    learn = digits_learner(dls, metrics=[error_rate, custom, accuracy, ValueMetric(lambda: 0.5, 'constant')],
                           cbs=WatchCallback(store=tmp_path / 'm.db'))
    learn.recorder.train_metrics = True
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(1)
    logged = [n for n in learn.recorder.metric_names if n not in ('epoch', 'time', 'train_loss', 'valid_loss')]
    assert 'train_error_rate' in logged and 'valid_top_class_share' in logged and 'valid_constant' in logged
    store = open_store(tmp_path / 'm.db')
    run_id = learn.watch.run_id
    feed = RunFeed(store, run_id)
    feed.snapshot()
    assert store.run(run_id).info.metric_names == logged == feed.metric_names()
    last = store.epochs(run_id)[-1]
    names = list(learn.recorder.metric_names[1:-1])
    for name, value in zip(names, learn.recorder.values[-1]):
        expected = last.train_loss if name == 'train_loss' else last.valid_loss if name == 'valid_loss' \
            else last.metrics[name]
        assert expected == pytest.approx(float(value))
    assert [s.key for s in charts_for(logged) if s.key.startswith('metric:')] == [f'metric:{n}' for n in logged]
