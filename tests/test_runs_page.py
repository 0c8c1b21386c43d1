"""Comparing runs on the page, in Debian's chromium on the real `fastwatch serve`: the runs table of a store of 1,000
runs (paged, sorted by a metric, filtered), a run started after the page opened appearing in it and turning
`finished`, and 25 runs overlaid with distinct colours. The runs are copies of a real training's rows."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from browser import CHROMIUM, served, train_in_background, with_query
from helpers import copy_run, wait_for

from fastwatch import open_store
from fastwatch.view.charts import RUN_COLORS

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f'no chromium at {CHROMIUM} (.ci/run installs it)')
MANY, OVERLAID = 1000, 25
# The colour and dash of each run's smooth-loss line, and the most entries a legend of the page has.
STYLES_JS = """() => { const styles = {}; let legend = 0;
  for (const doc of (window.Bokeh ? Bokeh.documents : [])) for (const model of doc._all_models.values()) {
    if (model.data_source && model.data_source.name && model.data_source.name.startsWith('smooth_loss:'))
      styles[model.data_source.name] = [JSON.stringify(model.glyph.line_color), JSON.stringify(model.glyph.line_dash)];
    if (model.items && model.type === 'Legend') legend = Math.max(legend, model.items.length); }
  return [styles, legend]; }"""


def rows_text(page) -> list[str]:
    "The runs table's rows on the page, as text."
    return [row.inner_text() for row in page.query_selector_all('.fw-rt-row') if row.is_visible()]


def count_text(page) -> str: return page.inner_text('.fw-rt-controls')


@pytest.fixture(scope='module')
def site(trained, tmp_path_factory):
    """A served folder with the trained store, a store of 1,000 runs (records and epochs: what the table reads,
    each run's error rate scaled so that each has its own) and a store of 25 whole copies of the run."""
    folder = tmp_path_factory.mktemp('runs')
    source, run_id = trained['store'], trained['run_id']
    many = open_store(folder / 'many.db')
    for i in range(MANY):
        factor = 1 + (i * 37 % MANY) / 100
        copy_run(source, run_id, many, f'many{i:04d}', name=f'copy {i:04d}', tables=('epochs',),
                 config={'lr': 10 ** -(1 + i % 4)}, created_at=1.7e9 + i,
                 metrics=lambda m, f=factor: {**m, 'error_rate': m['error_rate'] * f})
    overlay = open_store(folder / 'overlay.db')
    for i in range(OVERLAID):
        copy_run(source, run_id, overlay, f'overlay{i:02d}', name=f'run {i:02d}', created_at=1.7e9 + i)
    with served(trained['path'], folder, args=('--root', str(folder))) as url:
        yield {'url': url, 'folder': folder, 'many': many}


def test_a_store_of_1000_runs_opens_on_its_table_paged_sorted_by_a_metric_and_filtered(site, page):
    received = []
    page.on('websocket', lambda ws: ws.on('framereceived', lambda frame: received.append(len(frame))))
    page.on('response', lambda response: received.append(int(response.headers.get('content-length') or 0)))
    started = time.perf_counter()
    page.goto(with_query(site['url'], store='many.db'))  # no run named: the table
    page.wait_for_selector('.fw-rt-row button')
    print(f'table of {MANY} runs shown after {time.perf_counter() - started:.2f} s')
    assert f'1–20 of {MANY} runs' in count_text(page) and len(rows_text(page)) == 20
    assert rows_text(page)[0].startswith(f'copy {MANY - 1:04d}')  # newest first
    assert not any(canvas.is_visible() for canvas in page.query_selector_all('canvas'))  # no run's until one opens
    store = site['many']
    final = {run.name: store.epochs(run.id)[-1].metrics['error_rate'] for run in store.runs()}
    page.select_option('.fw-rt-controls select >> nth=1', 'error_rate')
    page.click('.fw-rt-controls button:has-text("descending")')  # ascending
    best = min(final, key=final.get)
    wait_for(lambda: rows_text(page)[0].startswith(best), timeout=30)
    page.click('.fw-rt-controls button:has-text("›")')
    wait_for(lambda: f'21–40 of {MANY} runs' in count_text(page), timeout=30)
    second_page = sorted(final, key=final.get)[20]
    assert rows_text(page)[0].startswith(second_page)
    page.fill('.fw-rt-controls input[type=text]', 'copy 0999')
    page.press('.fw-rt-controls input[type=text]', 'Enter')
    wait_for(lambda: '1–1 of 1 runs' in count_text(page), timeout=30)
    assert sum(received) < 5 * 2**20, sum(received)
    page.click('.fw-rt-row button:has-text("copy 0999")')  # opens it
    page.wait_for_selector('.fw-header:has-text("copy 0999")', timeout=30_000)
    page.wait_for_selector('canvas', timeout=30_000)


def test_a_run_started_after_the_page_opened_appears_and_turns_finished(site, page, digits_path, tmp_path):
    store = tmp_path / 'later.db'
    open_store(store).close()
    with served(store, tmp_path) as url:
        page.goto(url)
        page.wait_for_selector('text=No runs yet', timeout=60_000)
        trainer = train_in_background(digits_path, store, epochs=4, name='started later')  # live for a while
        try:
            wait_for(lambda: any(t.startswith('started later') and 'live' in t for t in rows_text(page)), timeout=120)
            assert trainer.wait(300) == 0
            wait_for(lambda: any(t.startswith('started later') and 'finished' in t for t in rows_text(page)),
                     timeout=60)
        finally:
            trainer.kill()


def test_25_runs_overlaid_each_have_their_own_colour_and_legend_entry(site, page):
    page.goto(with_query(site['url'], store='overlay.db', run=f'overlay{OVERLAID - 1:02d}'))
    page.wait_for_selector('canvas', timeout=60_000)
    for shown in ('1–20', '21–25'):  # 20 rows a page
        wait_for(lambda shown=shown: f'{shown} of {OVERLAID} runs' in count_text(page), timeout=30)
        boxes = page.locator('.fw-rt-row input[type=checkbox]:not([disabled])')
        for i in range(boxes.count()):
            if boxes.nth(i).is_visible(): boxes.nth(i).check()
        if shown == '1–20': page.click('.fw-rt-controls button:has-text("›")')
    page.wait_for_function(f'({STYLES_JS})()[1] == {OVERLAID}', timeout=120_000)
    styles = [tuple(json.loads(part) for part in style) for style in page.evaluate(STYLES_JS)[0].values()]
    assert len(styles) == OVERLAID and len({json.dumps(style) for style in styles}) == OVERLAID
    assert {json.dumps(color) for color, _ in styles} == {json.dumps({'value': c}) for c in RUN_COLORS}
    assert sum(dash['value'] != [] for _, dash in styles) == OVERLAID - len(RUN_COLORS)  # then dashed
