"""Each item's training dynamics, recorded from fastai's own passes: the validation items' values every epoch are
what `get_preds(with_loss=True)` gives with that epoch's weights, the training items' add up to the losses fastai
trained on, every item is named as the data names it, and `fastwatch suspects` ranks them by the stored values."""
from __future__ import annotations

import copy
import json
import shutil
import warnings
from unittest.mock import patch

import numpy as np
import pytest
from fastai.callback.core import Callback, CancelEpochException
from fastai.callback.mixup import MixUp
from fastai.metrics import accuracy
from fastai.tabular.all import CategoryBlock, Normalize, TabularDataLoaders, tabular_learner
from helpers import assert_map_from_numpy, cli, train
from sklearn.datasets import load_wine

from fastwatch import WatchCallback, open_store
from fastwatch.demo.digits import digits_dls, digits_learner, mislabel
from fastwatch.record.dynamics import SUSPECT_IMAGES
from fastwatch.record.thumbnails import file_thumbnail
from fastwatch.store.decisions import current, decide
from fastwatch.store.dynamics import SPLITS, ItemValues, item_thumbnails, read_data_map
from fastwatch.store.tables import top_losses
from fastwatch.view.feed import ItemsFeed


class KeepWeights(Callback):
    "A copy of the model's weights at each epoch's end, after fastwatch has recorded the epoch."
    order = WatchCallback.order + 1

    def before_fit(self):
        if not hasattr(self, 'states'): self.states = []

    def after_epoch(self): self.states.append(copy.deepcopy(self.learn.model.state_dict()))


@pytest.fixture(scope='module')
def mislabelled(few_digits, tmp_path_factory):
    "A fine_tune(2) run on a copy of the digits with 5% of its training images in a wrong class's folder."
    folder = tmp_path_factory.mktemp('mislabelled') / 'digits'
    shutil.copytree(few_digits, folder)
    moved = mislabel(folder, 0.05, seed=1)
    dls = digits_dls(folder, bs=16)
    weights = KeepWeights()
    learn = train(dls, folder.parent / 'runs.db', epochs=2, extra_cbs=[weights])
    store = open_store(folder.parent / 'runs.db')
    return {'learn': learn, 'store': store, 'run_id': learn.watch.run_id, 'moved': moved, 'folder': folder,
            'states': weights.states}


def test_validation_items_are_what_get_preds_gives_each_epoch(mislabelled):
    learn, store, run_id = mislabelled['learn'], mislabelled['store'], mislabelled['run_id']
    rows = store.rows('item_epochs', run_id, split='valid')
    assert [r.epoch for r in rows] == [0, 1, 2] == list(range(len(mislabelled['states'])))
    valid = learn.dls.valid.new(shuffle=False, drop_last=False)
    for row, state in zip(rows, mislabelled['states']):
        learn.model.load_state_dict(state)
        probs, targs, losses = learn.get_preds(dl=valid, with_loss=True)
        values = ItemValues.unpack(row.n_items, row.item_values)
        np.testing.assert_allclose(values.loss, losses.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(values.label, targs.numpy())
        np.testing.assert_array_equal(values.predicted, probs.argmax(1).numpy())
        label_prob = probs.gather(1, targs[:, None])[:, 0]
        np.testing.assert_allclose(values.label_prob, label_prob.numpy(), rtol=1e-5, atol=1e-6)
        others = probs.scatter(1, targs[:, None], -1.0).max(1).values
        np.testing.assert_allclose(values.margin, (label_prob - others).numpy(), rtol=1e-5, atol=1e-6)


def test_training_items_add_up_to_the_losses_fastai_trained_on(mislabelled):
    learn, store, run_id = mislabelled['learn'], mislabelled['store'], mislabelled['run_id']
    train_dl, batches = learn.dls.train, store.batches(run_id)
    labels = np.array([learn.dls.vocab.o2i[p.parent.name] for p in train_dl.items])
    rows = store.rows('item_epochs', run_id, split='train')
    assert [r.epoch for r in rows] == [0, 1, 2]
    for row in rows:
        values = ItemValues.unpack(row.n_items, row.item_values)
        assert len(values) == len(train_dl.dataset)
        # fastai drops the last partial batch of the shuffled training loader: exactly the others' items are seen.
        assert values.seen.sum() == len(train_dl) * train_dl.bs
        np.testing.assert_array_equal(values.label[values.seen], labels[values.seen])
        assert np.isnan(values.loss[~values.seen]).all()
        losses = [loss for loss, epoch in zip(batches['loss'], batches['epoch']) if epoch == row.epoch]
        assert np.nanmean(values.loss) == pytest.approx(np.mean(losses), rel=1e-5)
        # Each item's margin and probabilities are consistent with its prediction.
        right = values.predicted[values.seen] == values.label[values.seen]
        assert ((values.margin[values.seen] > 0) == right).all()


def test_items_are_named_as_the_data_names_them(mislabelled):
    learn, store, run_id, folder = (mislabelled[k] for k in ('learn', 'store', 'run_id', 'folder'))
    names = {row.split: row for row in store.rows('items', run_id)}
    assert set(names) == set(SPLITS)
    for split, dl in (('train', learn.dls.train), ('valid', learn.dls.valid)):
        row = names[split]
        assert row.root == str(folder.resolve())
        assert row.names == [str(p.relative_to(folder)) for p in dl.items]
        assert row.files == [[p.stat().st_size, p.stat().st_mtime_ns] for p in dl.items]
    assert set(mislabelled['moved']) <= set(names['train'].names)


def test_suspects_ranks_items_by_their_margin_recent_epochs_weighing_most(mislabelled, capsys):
    store, run_id = mislabelled['store'], mislabelled['run_id']
    margins = np.stack([ItemValues.unpack(r.n_items, r.item_values).margin
                        for r in store.rows('item_epochs', run_id, split='train')])
    score = [np.nan] * margins.shape[1]
    for i in range(margins.shape[1]):
        for m in margins[:, i]:
            if not np.isnan(m): score[i] = m if np.isnan(score[i]) else (m + score[i]) / 2
    score = np.array(score)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # the mean of an item never seen is NaN
        aum = np.nanmean(margins, 0)
    names = store.rows('items', run_id, split='train')[0].names
    seen = np.flatnonzero(~np.isnan(score))
    expected = [names[i] for i in seen[np.argsort(score[seen], kind='stable')][:10]]
    status, out, err = cli(capsys, 'suspects', run_id, '--store', store.location, '--top', '10', '--json')
    assert status == 0 and not err
    found = json.loads(out)
    assert [s['item'] for s in found['suspects']] == expected
    assert found['epochs'] == [0, 1, 2] and found['items'] == len(names)
    first = found['suspects'][0]
    assert first['score'] == pytest.approx(float(np.nanmin(score)), rel=1e-5)
    assert first['aum'] == pytest.approx(float(aum[names.index(first['item'])]), rel=1e-5)
    status, out, _ = cli(capsys, 'suspects', run_id, '--store', store.location, '--top', '3')
    assert status == 0 and out.count('\n') == 5 and expected[0] in out.splitlines()[2]
    status, out, err = cli(capsys, 'suspects', run_id, '--store', store.location, '--split', 'test')
    assert status == 1 and not out and err.count('\n') == 1 and '--split takes train or valid' in err


def test_a_mixup_run_records_no_training_dynamics_and_says_so_once(few_digits, tmp_path, capsys):
    learn = train(digits_dls(few_digits, bs=16), tmp_path / 'mixup.db', epochs=1, extra_cbs=[MixUp()], quiet=False)
    out = capsys.readouterr().out
    assert out.count('no per-item training dynamics') == 1 and 'MixUp' in out
    store = open_store(tmp_path / 'mixup.db')
    assert {(r.split, r.epoch) for r in store.rows('item_epochs', learn.watch.run_id)} == {('valid', 0), ('valid', 1)}
    assert read_data_map(store, learn.watch.run_id, 'train') is None


def test_tabular_rows_are_named_by_their_index_and_no_files(tmp_path):
    data = load_wine(as_frame=True)
    frame = data.frame.assign(target=data.target.map(dict(enumerate(data.target_names))))
    frame.index = [f'wine-{i}' for i in range(len(frame))]
    dls = TabularDataLoaders.from_df(frame, y_names='target', cont_names=list(data.feature_names), procs=[Normalize],
                                     y_block=CategoryBlock, valid_idx=list(range(0, len(frame), 5)), bs=16,
                                     num_workers=0)
    learn = tabular_learner(dls, layers=[16], metrics=accuracy, cbs=WatchCallback(store=tmp_path / 'wine.db'))
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2)
    store = open_store(tmp_path / 'wine.db')
    names = {row.split: row for row in store.rows('items', learn.watch.run_id)}
    assert names['valid'].names == [str(i) for i in dls.valid.items.index]
    assert names['train'].files is None and names['train'].root is None
    _, targs, losses = learn.get_preds(with_loss=True)
    last = store.rows('item_epochs', learn.watch.run_id, split='valid')[-1]
    values = ItemValues.unpack(last.n_items, last.item_values)
    np.testing.assert_allclose(values.loss, losses.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(values.label, targs.view(-1).numpy())


def test_the_top_suspects_have_thumbnails_of_their_files(mislabelled):
    store, run_id, folder = mislabelled['store'], mislabelled['run_id'], mislabelled['folder']
    found = read_data_map(store, run_id, 'train')
    images = {row.item_index: row for row in store.rows('item_images', run_id, split='train')}
    top = [int(i) for i in found.suspects()[:SUSPECT_IMAGES]]
    assert set(top) <= set(images)  # the first page's, as the run ranks them at its end
    for index in top:
        assert images[index].image == file_thumbnail(folder / found.name(index), 128)['image']
        assert images[index].image[:4] == b'\x89PNG'


class CancelFirstEpoch(Callback):
    "Cancels the first epoch after a few training batches, as a user's callback may (`CancelEpochException`)."
    def after_batch(self):
        if self.training and self.epoch == 0 and self.iter == 3: raise CancelEpochException


def test_an_epoch_cancelled_mid_way_leaves_the_next_epochs_items_their_own(few_digits, tmp_path):
    dls = digits_dls(few_digits, bs=16)
    learn = digits_learner(dls, cbs=[WatchCallback(store=tmp_path / 'cancel.db'), CancelFirstEpoch()])
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2)
    store, run_id = open_store(tmp_path / 'cancel.db'), learn.watch.run_id
    rows = store.rows('item_epochs', run_id, split='train')
    batches = store.batches(run_id)
    assert len(rows) == 1  # the cancelled epoch's training ended early: no values of it
    values = ItemValues.unpack(rows[0].n_items, rows[0].item_values)
    epoch = rows[0].epoch
    losses = [loss for loss, e in zip(batches['loss'], batches['epoch']) if e == epoch]
    assert values.seen.sum() == len(losses) * dls.train.bs == len(dls.train) * dls.train.bs
    assert np.nanmean(values.loss) == pytest.approx(np.mean(losses), rel=1e-5)


def read_counting(feed: ItemsFeed) -> tuple:
    "A feed's read, how many rows it got from the store (by table), and how many item values rows it unpacked."
    got, rows = {}, feed.store.rows
    feed.store.rows = lambda table, *args, **kwargs: got.setdefault(table.name, rows(table, *args, **kwargs))
    try:
        with patch.object(ItemValues, 'unpack', wraps=ItemValues.unpack) as unpack:
            return feed.read(), {table: len(found) for table, found in got.items()}, unpack.call_count
    finally: feed.store.rows = rows


class ReadsTheItemsEachEpoch(Callback):
    """The Items panel's feeds of the run, one a split, read at each epoch's end once fastwatch has written the epoch;
    `new`: the rows each read got, by table, and how many item values rows it unpacked; `maps`: each read's data map."""
    order = WatchCallback.order + 1

    def __init__(self, path):
        self.path, self.feeds, self.new, self.maps = path, {}, [], {split: [] for split in SPLITS}

    def after_epoch(self):
        watch = self.learn.watch
        assert watch.writer.flush(60)
        first = not self.feeds
        if first: self.feeds = {split: ItemsFeed(open_store(self.path, readonly=True), watch.run_id, split)
                                for split in SPLITS}
        for split, feed in self.feeds.items():
            read, got, unpacked = read_counting(feed)
            self.new.append((split, {**got, 'unpacked': unpacked}))
            self.maps[split].append(read.found)
        if first:  # the owner decides about the valid split's top suspect
            index = int(read.found.suspects()[0])
            decide(open_store(self.path), watch.run_id, 'valid', index, read.found.name(index), 'delete')


def test_the_items_panel_reads_only_the_rows_recorded_since_its_last_read(few_digits, tmp_path):
    """Each read of a split's items asks only for the rows after those it holds: one epoch's values a split each
    epoch, each decision once, and unpacks only the new epoch's values; what it shows is what reading the whole run
    at once gives, and each epoch's map what numpy makes of every epoch's values so far."""
    path = tmp_path / 'runs.db'
    reads = ReadsTheItemsEachEpoch(path)
    learn = train(digits_dls(few_digits, bs=16), path, epochs=2, extra_cbs=[reads])
    store, run_id = open_store(path), learn.watch.run_id
    assert [new['item_epochs'] for _, new in reads.new] == [1] * 6  # 3 epochs, 2 splits
    assert [new['unpacked'] for _, new in reads.new] == [1] * 6
    assert [new['decisions'] for split, new in reads.new if split == 'valid'] == [0, 1, 0]
    assert [new['items'] for split, new in reads.new] == [1, 1, 0, 0, 0, 0]
    assert all('top_losses' not in new for split, new in reads.new if split == 'train')
    assert [new['top_losses'] for split, new in reads.new if split == 'valid'] == [
        len(store.rows('top_losses', run_id, epoch=epoch)) for epoch in (0, 1, 2)]
    for split, feed in reads.feeds.items():
        (shown, got, unpacked), whole = read_counting(feed), read_data_map(store, run_id, split)
        assert not any(got.values()) and unpacked == 0  # nothing new: nothing unpacked again
        history = [ItemValues.unpack(r.n_items, r.item_values) for r in store.rows('item_epochs', run_id, split=split)]
        for epoch, found in enumerate(reads.maps[split]): assert_map_from_numpy(found, history[:epoch + 1])
        assert shown.found.epochs == whole.epochs == [0, 1, 2] and shown.found.names == whole.names
        for name in ('confidence', 'variability', 'correctness', 'aum', 'score'):
            np.testing.assert_array_equal(getattr(shown.found, name), getattr(whole, name))
        assert shown.found.suspects().tolist() == whole.suspects().tolist()
        assert shown.images == item_thumbnails(store, run_id, split)
        losses = store.rows('top_losses', run_id) if split == 'valid' else []
        assert len(feed.images[top_losses]) == len({row.item_index for row in losses})  # each item's latest only
        assert shown.decided == current(store.rows('decisions', run_id)) and len(shown.decided) == 1
        assert shown.vocab == [str(v) for v in store.run(run_id).vocab] and all(shown.vocab)
