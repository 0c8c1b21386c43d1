"""Every fastai task family, each a real tiny training: classifiers (tabular, text) record what fastai's
`ClassificationInterpretation` finds; multi-label, regression and segmentation record losses and metrics only."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from fastai.interpret import ClassificationInterpretation
from fastai.metrics import accuracy, foreground_acc, rmse
from fastai.tabular.all import CategoryBlock, Normalize, RandomSplitter, TabularDataLoaders, range_of, tabular_learner
from fastai.text.all import BaseTokenizer, ColReader, ColSplitter, DataBlock, TextBlock
from fastai.vision.all import (
    CrossEntropyLossFlat,
    ImageBlock,
    Learner,
    MaskBlock,
    PILMask,
    Resize,
    get_image_files,
    nn,
)
from PIL import Image
from sklearn.datasets import load_wine

from fastwatch import WatchCallback, open_store
from fastwatch.view.charts import most_confused


def fit(learn: Learner, epochs: int = 1, lr: float = 1e-2) -> dict:
    "Fit with recording warnings raised as errors (recording must never stop); the store's only run."
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.filterwarnings('error', message='fastwatch', category=RuntimeWarning)
        learn.fit(epochs, lr)
    store = open_store(learn.watch.store)
    run = store.runs()[0]
    assert run.status == 'finished' and len(store.runs()) == 1
    return {'store': store, 'run_id': run.id}


def assert_recorded_as_interpretation(learn: Learner, recorded: dict) -> ClassificationInterpretation:
    "The stored confusion cells, most-confused pairs and top losses are ClassificationInterpretation's."
    store, run_id = recorded['store'], recorded['run_id']
    interp = ClassificationInterpretation.from_learner(learn)
    confusion = store.confusion(run_id)
    np.testing.assert_array_equal(confusion.matrix, interp.confusion_matrix())
    assert confusion.vocab == [str(v) for v in interp.vocab]
    assert most_confused(confusion.cells, confusion.vocab, 100) == [
        (str(a), str(p), int(c)) for a, p, c in interp.most_confused()]
    losses, idxs = interp.top_losses(16)
    top = store.top_losses(run_id)
    assert [t.item_index for t in top] == idxs.tolist()
    np.testing.assert_allclose([t.loss for t in top], losses.tolist(), rtol=1e-5)
    # What confusion_matrix() reads, in dataset order (interp[idxs] re-tokenizes a text classifier's items).
    preds, targs, decoded = learn.get_preds(dl=interp.dl, with_decoded=True)
    vocab = [str(v) for v in interp.vocab]
    for t, pred, targ, dec in zip(top, preds[idxs], targs.view(-1)[idxs], decoded.view(-1)[idxs]):
        assert (t.actual, t.predicted) == (vocab[targ], vocab[dec])
        assert t.probability == pytest.approx(pred.max().item(), rel=1e-5)
    return interp


@pytest.fixture(scope='module')
def wine():
    data = load_wine(as_frame=True)
    frame = data.frame.assign(target=data.target.map(dict(enumerate(data.target_names))))
    return frame, list(data.feature_names)


def test_tabular_classifier_records_confusion_and_top_rows(wine, tmp_path):
    frame, features = wine
    valid = RandomSplitter(0.3, seed=0)(range_of(frame))[1]
    dls = TabularDataLoaders.from_df(frame, y_names='target', cont_names=features, procs=[Normalize],
                                     y_block=CategoryBlock, valid_idx=valid, bs=32, num_workers=0)
    assert dls.valid.one_batch()[-1].shape[1:] == (1,)  # tabular targets: (bs, 1)
    learn = tabular_learner(dls, layers=[16], metrics=accuracy, cbs=WatchCallback(store=tmp_path / 'wine.db'))
    recorded = fit(learn, lr=1e-3)
    interp = assert_recorded_as_interpretation(learn, recorded)
    _, idxs = interp.top_losses(16)
    rows = dls.valid.items
    for t, i in zip(recorded['store'].top_losses(recorded['run_id']), idxs.tolist()):
        assert t.item == str(rows.index[i])  # the row's label in the user's DataFrame
        original = frame.loc[rows.index[i]]
        shown = dict(pair.split('=', 1) for pair in t.text.split(' ')[:3])
        assert list(shown) == features[:3]
        for name, value in shown.items(): assert float(value) == pytest.approx(original[name], rel=1e-4)  # decoded


def text_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    "Short texts of varying length whose topic words give the class: SortedDL reorders them by length."
    rng = np.random.default_rng(seed)
    topics = {'fruit': 'apple pear plum'.split(), 'vehicle': 'car bus train'.split(), 'colour': 'red blue'.split()}
    noise = 'the a of and to in is it'.split()
    rows = []
    for i in range(n):
        label = list(topics)[rng.integers(3)]
        words = [rng.choice(topics[label]) if rng.random() < 0.3 else rng.choice(noise)
                 for _ in range(rng.integers(2, 24))]
        rows.append({'text': ' '.join(words), 'label': label, 'is_valid': i % 5 == 0})
    return pd.DataFrame(rows)


class MeanEmbedding(nn.Module):
    "The mean embedding of a text's tokens (padding left out), then a linear layer: trains in a second."
    def __init__(self, n_tokens: int, n_classes: int, pad: int = 1):
        super().__init__()
        self.embedding, self.head, self.pad = nn.Embedding(n_tokens, 16), nn.Linear(16, n_classes), pad

    def forward(self, x):
        tokens = (x != self.pad).unsqueeze(-1).float()
        return self.head((self.embedding(x) * tokens).sum(1) / tokens.sum(1).clamp(min=1))


def test_text_classifier_maps_sorted_positions_back_to_items(tmp_path):
    block = DataBlock(blocks=(TextBlock.from_df('text', tok=BaseTokenizer(), min_freq=1, n_workers=0), CategoryBlock),
                      get_x=ColReader('text'), get_y=ColReader('label'), splitter=ColSplitter('is_valid'))
    dls = block.dataloaders(text_frame(), bs=16, num_workers=0)
    order = list(dls.valid.get_idxs())
    assert type(dls.valid).__name__ == 'SortedDL' and order != sorted(order)  # positions are not dataset indices
    learn = Learner(dls, MeanEmbedding(len(dls.vocab[0]), len(dls.vocab[1])), loss_func=CrossEntropyLossFlat(),
                    metrics=accuracy, cbs=WatchCallback(store=tmp_path / 'text.db'))
    recorded = fit(learn, epochs=2)
    interp = assert_recorded_as_interpretation(learn, recorded)
    _, idxs = interp.top_losses(16)
    items = dls.valid.items
    for t, i in zip(recorded['store'].top_losses(recorded['run_id']), idxs.tolist()):
        assert t.item == str(items.index[i])
        assert t.text == ' '.join(items.iloc[i]['text'])[:200]  # that item's own tokens, decoded


def test_tabular_regression_with_bs_1_float_targets_records_no_confusion(wine, tmp_path):
    frame, features = wine
    dls = TabularDataLoaders.from_df(frame, y_names='alcohol', cont_names=features[1:], procs=[Normalize],
                                     valid_idx=list(range(0, len(frame), 4)), bs=32, num_workers=0)
    learn = tabular_learner(dls, layers=[16], metrics=rmse, cbs=WatchCallback(store=tmp_path / 'reg.db'))
    recorded = fit(learn, lr=1e-3)
    store, run_id = recorded['store'], recorded['run_id']
    counts = store.counts(run_id)
    counts.pop('system')  # samples of the process: none in a run shorter than the writer's first commit
    assert counts == {**dict.fromkeys(counts, 0), 'batches': len(dls.train), 'epochs': 1}
    assert store.epochs(run_id)[0].metrics['_rmse'] == pytest.approx(float(learn.recorder.values[-1][2]))


def test_segmentation_records_losses_and_metrics_without_confusion(digits_path, tmp_path):
    def mask(path) -> PILMask: return PILMask.create((np.asarray(Image.open(path)) > 100).astype(np.uint8))
    block = DataBlock(blocks=(ImageBlock, MaskBlock(codes=['background', 'ink'])), get_y=mask,
                      splitter=lambda items: (list(range(0, len(items), 5)), list(range(1, len(items), 5))),
                      item_tfms=Resize(16))
    dls = block.dataloaders(get_image_files(digits_path), bs=32, num_workers=0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(axis=1), metrics=foreground_acc,
                    cbs=WatchCallback(store=tmp_path / 'seg.db'))
    recorded = fit(learn)
    store, run_id = recorded['store'], recorded['run_id']
    counts = store.counts(run_id)
    counts.pop('system')  # samples of the process: none in a run shorter than the writer's first commit
    assert counts == {**dict.fromkeys(counts, 0), 'batches': len(dls.train), 'epochs': 1}
    epoch = store.epochs(run_id)[0]
    assert epoch.metrics['foreground_acc'] == pytest.approx(float(learn.recorder.values[-1][2]))
    assert epoch.valid_loss == pytest.approx(float(learn.recorder.values[-1][1]))
    assert torch.isfinite(torch.tensor(store.batches(run_id)['loss'])).all()
