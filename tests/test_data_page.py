"""Cleaning the data on the page, end to end: a real training on digits with known mislabeled images, the real
`fastwatch serve`, Debian's chromium. The owner's page shows the data map and the suspects, takes decisions that
survive a reload; a page of a copy of the store shows them read-only, and its kernel refuses a decision."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMIUM, served, with_query
from helpers import train, wait_for

from fastwatch import open_store
from fastwatch.demo.digits import digits_dls, mislabel
from fastwatch.errors import StoreError
from fastwatch.store.decisions import current, decide
from fastwatch.store.dynamics import ItemValues, read_data_map
from fastwatch.view.charts import most_confused
from fastwatch.view.dashboard import Dashboard
from fastwatch.view.panels.epoch_panel import PAIR_ITEMS

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f'no chromium at {CHROMIUM} (.ci/run installs it)')
# The data map's source in the page's bokeh documents: the one with a `correct` column.
MAP_POINTS_JS = """() => { for (const doc of (window.Bokeh ? Bokeh.documents : []))
  for (const model of doc._all_models.values()) if (model.data && 'correct' in model.data) return model.data.x.length;
  return -1; }"""
PICK_JS = """index => { for (const doc of Bokeh.documents)
  for (const model of doc._all_models.values()) if (model.data && 'correct' in model.data) {
    model.selected.indices = [model.data.index.indexOf(index)]; return true; }
  return false; }"""


@pytest.fixture(scope='module')
def site(few_digits, tmp_path_factory):
    "A fine_tune(2) run on digits with 5% of its training images in a wrong class's folder, served."
    folder = tmp_path_factory.mktemp('cleaning')
    shutil.copytree(few_digits, folder / 'digits')
    moved = mislabel(folder / 'digits', 0.05, seed=2)
    learn = train(digits_dls(folder / 'digits', bs=16), folder / 'store.db', epochs=2)
    with served(folder / 'store.db', folder, args=('--root', str(folder))) as url:
        yield {'url': url, 'folder': folder, 'store': folder / 'store.db', 'run_id': learn.watch.run_id,
               'moved': moved}


def test_the_owner_decides_on_suspects_and_the_decisions_survive_a_reload(site, page):
    run_id, store = site['run_id'], open_store(site['store'], readonly=True)
    found = read_data_map(store, run_id, 'train')
    page.goto(with_query(site['url'], run=run_id))
    page.wait_for_selector('text=Items: data map and suspects', timeout=60_000)
    seen = int(np.count_nonzero(~np.isnan(found.confidence)))
    page.wait_for_function(f'({MAP_POINTS_JS})() == {seen}', timeout=30_000)
    cards = page.locator('.fw-cards-page .fw-card')
    cards.first.wait_for()
    assert cards.count() == 16
    first, second = (found.name(int(i)) for i in found.suspects()[:2])
    assert first in cards.nth(0).inner_text() and second in cards.nth(1).inner_text()
    page.locator('button', has_text='next ›').click()  # the next 16
    page.wait_for_selector(f'.fw-cards-page .fw-card:has-text("{found.name(int(found.suspects()[16]))}")')
    assert cards.count() == 16 and '#17 ' in cards.nth(0).inner_text()
    page.locator('button', has_text='‹ previous').click()
    page.wait_for_selector(f'.fw-cards-page .fw-card:has-text("{first}")')

    page.locator('.fw-cards-page button', has_text='delete').first.click()
    wait_for(lambda: len(store.rows('decisions', run_id)) == 1, timeout=30)
    page.locator('.fw-cards-page select').nth(1).select_option('7')
    wait_for(lambda: len(store.rows('decisions', run_id)) == 2, timeout=30)
    page.wait_for_selector('text=2 decided')
    decided = current(store.rows('decisions', run_id))
    assert decided[('train', first)].action == 'delete'
    assert (decided[('train', second)].action, decided[('train', second)].label) == ('relabel', '7')

    page.reload()
    page.wait_for_selector('text=2 decided', timeout=60_000)
    assert 'delete' in page.locator('.fw-cards-page .fw-card').nth(0).inner_text()
    assert 'relabel as 7' in page.locator('.fw-cards-page .fw-card').nth(1).inner_text()

    # A pick on the map shows the item's history, every epoch that saw it.
    index = int(found.suspects()[0])
    assert page.evaluate(PICK_JS, index)
    page.wait_for_selector('.fw-detail table')
    history = page.locator('.fw-detail table tr').count() - 1
    assert history == sum(bool(h.seen[index]) for h in found.history) and first in page.inner_text('.fw-detail')

    # Undo takes a decision back.
    page.locator('.fw-decisions button', has_text='undo').first.click()
    page.wait_for_selector('text=1 decided', timeout=30_000)
    assert list(current(store.rows('decisions', run_id))) == [('train', second)]


def test_a_copy_of_the_store_shows_decisions_read_only_and_its_kernel_refuses_them(site, page):
    run_id = site['run_id']
    decide(open_store(site['store']), run_id, 'train', 3, 'train/3/x.png', 'keep')
    copy = site['folder'] / 'copy.db'
    with sqlite3.connect(site['store']) as source, sqlite3.connect(copy) as target: source.backup(target)
    before = open_store(copy, readonly=True).rows('decisions', run_id)
    page.goto(with_query(site['url'], run=run_id, store='copy.db'))
    page.wait_for_selector('text=Items: data map and suspects', timeout=60_000)
    page.wait_for_selector(f'text={len(current(before))} decided')
    assert 'read-only' in page.inner_text('.fastwatch')
    assert page.locator('.fw-cards-page button, .fw-cards-page select, .fw-decisions button').count() == 0
    # A decision forged from such a page reaches a dashboard that has no way to record it.
    dashboard = Dashboard(open_store(copy, readonly=True), run_id)
    with pytest.raises(StoreError, match='read-only'):
        dashboard.data_panel._record('train', 0, 'train/0/x.png', 'delete')
    assert open_store(copy, readonly=True).rows('decisions', run_id) == before


CELL_JS = """([actual, predicted]) => { for (const doc of Bokeh.documents)
  for (const model of doc._all_models.values()) if (model.data && 'share' in model.data) {
    const at = model.data.actual.findIndex((a, i) => a === actual && model.data.predicted[i] === predicted);
    model.selected.indices = [at]; return at; }
  return -1; }"""


def test_a_cell_of_the_confusion_matrix_or_a_pair_shows_its_items(site, page):
    run_id, store = site['run_id'], open_store(site['store'], readonly=True)
    last = store.rows('item_epochs', run_id, split='valid')[-1]
    values = ItemValues.unpack(last.n_items, last.item_values)
    names = store.rows('items', run_id, split='valid')[0].names
    vocab = [str(v) for v in store.run(run_id).vocab]
    page.goto(with_query(site['url'], run=run_id))
    page.wait_for_selector('text=Most confused', timeout=60_000)
    actual, predicted, _ = max(store.confusion(run_id).cells.tolist(), key=lambda cell: cell[2])  # the fullest
    page.wait_for_function(f'({CELL_JS})(["{vocab[actual]}", "{vocab[predicted]}"]) >= 0', timeout=30_000)
    cell = np.flatnonzero((values.label == actual) & (values.predicted == predicted))
    page.wait_for_selector(f'.fw-pair-items >> text={len(cell)} items of actual', timeout=30_000)
    assert page.locator('.fw-pair-items figure').count() == min(len(cell), PAIR_ITEMS)
    worst = cell[np.argmax(values.loss[cell])]
    assert names[worst] in page.locator('.fw-pair-items figure').first.inner_text()
    a, p, n = most_confused(store.confusion(run_id).cells, vocab)[0]
    page.locator('select').filter(has_text='a cell or pair…').select_option(f'{a} → {p} ({n})')
    page.wait_for_selector(f'.fw-pair-items >> text={n} items of actual', timeout=30_000)
    assert page.locator('.fw-pair-items figure').count() == min(n, PAIR_ITEMS)
