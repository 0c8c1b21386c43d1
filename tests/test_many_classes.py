"""Many classes (1,000 and 20,000, a tiny linear model on random features) and targets outside the vocabulary:
recorded exactly, held and stored sparsely, and shown by the dashboard (and in chromium) without n² anything."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from bokeh.embed import json_item
from browser import CHROMIUM, kernels, launch, open_dashboard, page_kernel, served, with_query
from fastai.callback.core import Callback
from fastai.interpret import ClassificationInterpretation
from many_classes import IGNORE_INDEX, train_many_classes
from PIL import Image
from sklearn.metrics import confusion_matrix

from fastwatch import open_store
from fastwatch.cli import run_command
from fastwatch.record.dynamics import PENDING_VALUES, PerItem
from fastwatch.share.exports import HEATMAP_SIDE, confusion_png
from fastwatch.store.confusion import dense
from fastwatch.view.charts import IMAGE_SIDE, most_confused
from fastwatch.view.dashboard import Dashboard


class HeldByCollector(Callback):
    """The most tensor elements WatchCallback's validation collector holds at the end of any validation batch:
    per-item values, and scores of batches not reduced to per-item values yet."""
    order = 100  # after WatchCallback

    def before_fit(self): self.most = self.most_pending = 0

    def after_batch(self):
        collector = self.learn.watch.collectors[-1] if self.learn.watch.collectors else None
        if self.training or collector is None: return
        held = [t for chunk in collector.items for t in chunk]
        self.most = max(self.most, sum(t.numel() for t in held))
        pending = sum(t.numel() for batch in collector.pending for t in batch if t is not None)
        self.most_pending = max(self.most_pending, pending)
        self.batch_scores = self.pred.numel()

    def peaks(self) -> dict:
        "What the training's passes held at most (taken before an evaluation starts counting anew)."
        return {'items': self.most, 'pending': self.most_pending, 'batch_scores': self.batch_scores}


def valid_with_vocab(learn):
    "The validation loader as ClassificationInterpretation takes it, with the class names plain tensors lack."
    dl = learn.dls.valid.new(shuffle=False, drop_last=False)
    dl.vocab = [learn.dls.vocab]  # it takes the last part of a list (text data has [tokens, classes])
    return dl


def oracle(learn) -> dict:
    "ClassificationInterpretation's top losses, and the confusion matrix of the targets the loss does not ignore."
    dl = valid_with_vocab(learn)
    interp = ClassificationInterpretation.from_learner(learn, dl=dl)
    learn.model.eval()
    with torch.no_grad():
        decoded = torch.cat([learn.model(x).argmax(-1) for x, _ in dl])
    targets = torch.cat([y for _, y in dl])
    kept = targets != IGNORE_INDEX
    n = len(learn.dls.vocab)
    return {'interp': interp, 'kept': int(kept.sum()), 'targets': targets,
            'matrix': confusion_matrix(targets[kept], decoded[kept], labels=range(n)) if n <= 1000 else None,
            'decoded': decoded}


@pytest.fixture(scope='module')
def thousand(tmp_path_factory):
    "A 1,000-class run with 5% of its targets IGNORE_INDEX, and what fastai finds of it."
    path = tmp_path_factory.mktemp('thousand') / 'store.db'
    held = HeldByCollector()
    learn = train_many_classes(path, 1000, cbs=[held])
    store = open_store(path)
    return {'path': path, 'store': store, 'run_id': store.runs()[0].id, 'learn': learn, 'held': held.peaks(),
            **oracle(learn)}


@pytest.fixture(scope='module')
def twenty_thousand(tmp_path_factory):
    path = tmp_path_factory.mktemp('twenty_thousand') / 'store.db'
    held = HeldByCollector()
    learn = train_many_classes(path, 20_000, n_train=2000, n_valid=3000, cbs=[held])
    store = open_store(path)
    return {'path': path, 'store': store, 'run_id': store.runs()[0].id, 'learn': learn, 'held': held.peaks(),
            **oracle(learn)}


@pytest.mark.parametrize('case', ['thousand', 'twenty_thousand'])
def test_many_classes_recorded_sparsely_as_fastai_finds_them(case, request):
    run = request.getfixturevalue(case)
    store, run_id, learn = run['store'], run['run_id'], run['learn']
    n, n_valid = len(learn.dls.vocab), len(learn.dls.valid_ds)
    assert store.run(run_id).status == 'finished'
    confusion = store.confusion(run_id)
    cells = confusion.cells
    assert confusion.n_classes == n and confusion.vocab == learn.dls.vocab and confusion.matrix is None
    assert cells[:, 2].sum() == run['kept'] < n_valid  # ignored targets are counted nowhere
    assert len(cells) <= run['kept'] and (cells[:, 2] > 0).all()
    if run['matrix'] is not None: np.testing.assert_array_equal(dense(cells, n), run['matrix'])
    else:  # 20,000² is 3.2 GB dense: compare the pairs
        kept = run['targets'] != IGNORE_INDEX
        pairs, counts = np.unique(np.stack([run['targets'][kept], run['decoded'][kept]], 1), axis=0,
                                  return_counts=True)
        np.testing.assert_array_equal(cells, np.column_stack([pairs, counts]))
    losses, idxs = run['interp'].top_losses(16)
    top = store.top_losses(run_id)
    assert [t.item_index for t in top] == idxs.tolist()
    np.testing.assert_allclose([t.loss for t in top], losses.tolist(), rtol=1e-5)
    assert {t.actual for t in top} <= set(learn.dls.vocab)
    # The pass holds a few values per item, never per class pair: a `PerItem` of tensors of at most n_valid items.
    held = run['held']
    assert held['items'] <= len(PerItem._fields) * n_valid
    # ... and the scores of at most PENDING_VALUES (one batch more) not reduced yet: nothing grows with n².
    assert 0 < held['pending'] <= PENDING_VALUES + 2 * held['batch_scores']
    if n * n_valid > 2 * PENDING_VALUES: assert held['items'] > 0  # reduced during the pass, not only at its end


def test_targets_outside_the_vocabulary_are_ignored_as_the_loss_ignores_them(tmp_path):
    learn = train_many_classes(tmp_path / 'few.db', 12, n_train=600, n_valid=400, ignored=0.2)
    store = open_store(tmp_path / 'few.db')
    run_id = store.runs()[0].id
    interp = ClassificationInterpretation.from_learner(learn, dl=valid_with_vocab(learn))
    np.testing.assert_array_equal(store.confusion(run_id).matrix, interp.confusion_matrix())  # no -100 row
    losses, idxs = interp.top_losses(16)
    assert [t.item_index for t in store.top_losses(run_id)] == idxs.tolist()


@pytest.mark.parametrize('case', ['thousand', 'twenty_thousand'])
def test_dashboard_draws_one_binned_image_and_the_most_confused_table(case, request):
    run = request.getfixturevalue(case)
    view = Dashboard(open_store(run['path'], readonly=True)).epoch_panel
    chart, n = view.confusion, len(run['learn'].dls.vocab)
    confusion = run['store'].confusion(run['run_id'])
    [image] = chart.source.data['image']
    size = -(-n // IMAGE_SIDE)
    assert not chart.dense and image.shape == (-(-n // size),) * 2 and image.shape[0] <= IMAGE_SIDE
    assert image.sum() == run['kept']
    actual, predicted, count = confusion.cells[np.argmax(confusion.cells[:, 2])]
    assert image[actual // size, predicted // size] >= count
    assert not [r for r in chart.fig.renderers if type(r.glyph).__name__ in ('Rect', 'Text')]  # no per-cell glyphs
    # The page's confusion chart, serialised as bokeh sends it: far under 5 MB.
    assert len(json.dumps(json_item(chart.fig))) + image.nbytes < 2e6
    expected = most_confused(confusion.cells, confusion.vocab)
    assert expected and all(f'<td>{a}</td><td>{p}</td><td>{c}</td>' in view.pairs.value for a, p, c in expected)
    view.normalised.value = True
    [shares] = chart.source.data['image']
    rows = image.sum(axis=1) > 0
    np.testing.assert_allclose(shares.sum(axis=1)[rows], 1, rtol=1e-5)


def test_confusion_png_of_many_classes_is_a_bounded_heatmap(twenty_thousand, thousand, tmp_path):
    confusion = twenty_thousand['store'].confusion(twenty_thousand['run_id'])
    png, width, height = confusion_png(confusion.cells, confusion.vocab)
    image = Image.open(io.BytesIO(png))
    assert image.size == (width, height) and width == height <= HEATMAP_SIDE
    assert np.asarray(image)[..., 0].min() < 255  # some bins are shaded
    assert run_command('export', [thousand['run_id'], '--format', 'tensorboard', '-o', str(tmp_path / 'tb'),
                                  '--store', str(thousand['path'])]) == 0


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f'no chromium at {CHROMIUM}')
def test_a_1000_class_page_settles_and_keeps_answering_in_chromium(thousand, tmp_path):
    playwright = pytest.importorskip('playwright.sync_api').sync_playwright().start()
    browser = launch(playwright)
    try:
        with served(thousand['path'], tmp_path) as url:
            page = browser.new_page(viewport={'width': 1280, 'height': 900})
            open_dashboard(page, with_query(url, run=thousand['run_id']), timeout=60)
            image_js = """() => { for (const doc of Bokeh.documents) for (const m of doc._all_models.values())
                if (m.data && m.data.image && m.data.image.length) {
                  const a = m.data.image[0]; let highest = 0;
                  for (let i = 0; i < a.length; i++) if (a[i] > highest) highest = a[i];
                  return [a.shape[0], highest]; }
                return null; }"""
            page.wait_for_function(f'({image_js})() !== null', timeout=30_000)
            rows, highest = page.evaluate(image_js)
            assert rows == -(-1000 // -(-1000 // IMAGE_SIDE)) and highest > 1  # counts
            size = -(-1000 // IMAGE_SIDE)
            page.locator('.fw-confusion canvas').last.scroll_into_view_if_needed()  # below the charts' rows
            boxes = [c.bounding_box() for c in page.locator('.fw-confusion canvas').all()]  # None: not shown (now)
            chart = max(filter(None, boxes), key=lambda box: box['y'])
            page.mouse.move(chart['x'] + chart['width'] / 2, chart['y'] + 100)
            hover = page.get_by_text(re.compile(rf'^class \d+ … class \d+ \({size} classes\)$'))
            hover.first.wait_for(timeout=30_000)  # the hover names the classes of the bin under the pointer
            page.get_by_text('row-normalised').click()
            page.wait_for_function(f'({image_js})()[1] <= 1.0001', timeout=30_000)
            page.screenshot(timeout=30_000)  # the page still paints and answers
            assert page.evaluate('1 + 1') == 2
            assert kernels(url)[page_kernel(page)] < 150
    finally:
        browser.close()
        playwright.stop()
