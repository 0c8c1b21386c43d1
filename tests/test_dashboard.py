"""The dashboard's logic, against stores written by real short trainings: no browser (see test_browser.py)."""
from __future__ import annotations

import asyncio
import filecmp
import sqlite3
import threading
from pathlib import Path

import nbformat
import numpy as np
import pytest
from conftest import train
from nbclient import NotebookClient

from fastwatch import RunNotFound, StoreError, open_store
from fastwatch.demo.digits import digits_dls, digits_folder
from fastwatch.share.links import binder_url, binder_url_from_env, local_url
from fastwatch.store.confusion import cells_of
from fastwatch.view.charts import most_confused
from fastwatch.view.dashboard import Dashboard, dashboard
from fastwatch.view.live import RunFeed, fit_spans, follow
from fastwatch.view.page import QueryError, open_view_store, parse_query

ROOT = Path(__file__).parents[1]
HOSTILE = '<img src=x onerror=alert(1)>'


def copy_store(source: Path, dest: Path) -> None:
    "A consistent copy of a SQLite store, including what is still in its write-ahead log."
    with sqlite3.connect(source) as src, sqlite3.connect(dest) as dst: src.backup(dst)


@pytest.fixture
def view(trained, monkeypatch):
    "A dashboard on the trained run's store, opened read-only as a page opens it."
    monkeypatch.setenv('FASTWATCH_STORE', str(trained['path']))
    return Dashboard(open_view_store())


@pytest.fixture(scope='module')
def hostile(tmp_path_factory):
    "A finished run whose name and class names are HTML."
    path = tmp_path_factory.mktemp('hostile')
    names = [f'{HOSTILE}{i}' for i in range(9)] + ['<b>nine</b>']
    dls = digits_dls(digits_folder(path / 'digits', per_class=20, class_names=names))
    train(dls, path / 'store.db', epochs=1, name=HOSTILE)
    return open_store(path / 'store.db', readonly=True)


def test_dashboard_shows_the_trained_run(view, trained):
    store, run_id = trained['store'], trained['run_id']
    assert view.run_id == run_id and view.picker.value == run_id
    assert 'digits' in view.header.value and 'finished' in view.header.value and run_id in view.header.value
    n_batches, epochs = store.counts(run_id)['batches'], store.epochs(run_id)
    assert view.charts['loss'].points(run_id, 'loss') == n_batches
    assert view.charts['loss'].points(run_id, 'valid_loss') == len(epochs)
    assert set(view.charts) >= {f'metric:{name}' for name in epochs[-1]['metrics']}
    assert view.epoch.max == epochs[-1]['epoch'] == view.epoch.value
    matrix = store.confusion(run_id)['matrix']
    assert sum(view.confusion.source.data['count']) == matrix.sum() == store.run(run_id)['info']['n_valid']
    assert view.gallery.value.count('<img') == len(store.top_losses(run_id))
    assert f'run={run_id}' in view.share.value


def test_epoch_slider_and_toggle_step_through_the_confusion_matrices(view, trained):
    store, run_id = trained['store'], trained['run_id']
    view.epoch.value = view.epoch.min
    first = store.confusion(run_id, view.epoch.min)['matrix']
    assert view.confusion.source.data['count'] == first.ravel().tolist()
    view.normalised.value = True
    shares = np.array(view.confusion.source.data['share']).reshape(first.shape)
    assert np.allclose(shares.sum(axis=1)[first.sum(axis=1) > 0], 1)
    assert view.gallery.value.count('<img') == len(store.top_losses(run_id, view.epoch.min))


def test_overlay_draws_several_runs_on_the_same_charts(trained, dls, tmp_path):
    path = tmp_path / 'two.db'
    train(dls, path, epochs=1, name='first')
    train(dls, path, epochs=1, name='second')
    view = Dashboard(open_store(path, readonly=True))
    newest, older = [run['id'] for run in view.store.runs()]
    assert view.run_id == newest
    view.overlay.value = (older,)
    assert {run for run, _ in view.charts['loss'].sources} == {newest, older}
    assert view.charts['loss'].points(older, 'smooth_loss') == view.store.counts(older)['batches']
    view.picker.value = older
    assert view.overlay.value == () and list(view.feeds) == [older]


def test_fit_spans_follow_fine_tunes_frozen_then_unfrozen_fits(trained):
    store, run_id = trained['store'], trained['run_id']
    feed = RunFeed(store, run_id)
    spans = feed.snapshot()['spans']
    assert [span['frozen'] for span in spans] == [True, False]
    assert spans[0]['start'] == 0 and spans[1]['start'] == spans[0]['end'] + 1
    assert spans[-1]['end'] == store.batches(run_id)['step'][-1]
    assert fit_spans([], None) == []


def test_series_are_downsampled_keeping_extremes(trained):
    store, run_id = trained['store'], trained['run_id']
    loss = store.batches(run_id)['loss']
    series = RunFeed(store, run_id, max_points=20).snapshot()['series']['loss']
    assert len(series['y']) <= 24 < len(loss)
    assert min(series['y']) == min(loss) and max(series['y']) == max(loss)


def test_feed_and_dashboard_stream_a_live_training(dls, tmp_path):
    path = tmp_path / 'live.db'
    trainer = threading.Thread(target=train, args=(dls, path, 2), kwargs={'name': 'live'})
    trainer.start()
    store = None
    while store is None or not store.runs():
        try: store = open_store(path, readonly=True)
        except StoreError: pass
    view = Dashboard(store)
    run_id, cursors, grew = view.run_id, [], 0
    while trainer.is_alive() or view.refresh():
        before = view.charts['loss'].points(run_id, 'loss')
        view.refresh()
        grew += view.charts['loss'].points(run_id, 'loss') > before
        cursors.append(view.feeds[run_id].cursor)
    trainer.join()
    view.refresh()
    steps = view.charts['loss'].sources[run_id, 'loss'].data['x']
    assert steps == store.batches(run_id)['step']  # every row once, in order: only what is new is read
    assert grew > 1 and [c for c in cursors if c is not None] == sorted(c for c in cursors if c is not None)
    assert view.feeds[run_id].run['state'] == 'finished' and 'finished' in view.header.value
    assert view.epoch.value == store.epochs(run_id)[-1]['epoch']


def test_follow_stops_when_nothing_is_left_and_after_its_lifetime():
    reasons, calls = [], []
    asyncio.run(follow(lambda: calls.append(1) or len(calls) < 3, interval=0, on_stop=reasons.append))
    asyncio.run(follow(lambda: True, interval=0.01, lifetime=0.05, on_stop=reasons.append))
    asyncio.run(follow(lambda: 1 / 0, on_stop=reasons.append))
    assert len(calls) == 3 and reasons[:2] == ['ended', 'lifetime'] and reasons[2].startswith('error: ZeroDivision')


def test_the_live_loop_stops_itself_when_the_run_has_ended_and_nothing_is_new(view):
    async def started() -> asyncio.Task:
        view.start()
        task = view.task
        await asyncio.wait_for(task, 5)
        return task
    assert asyncio.run(started()).done() and view.task is None and view.note.value == ''


def test_names_from_the_store_are_shown_escaped(hostile):
    view = Dashboard(hostile)
    html = view.header.value + view.gallery.value + view.pairs.value
    assert '<img src=x' not in html.replace("<img src='data:", '')
    assert '&lt;img src=x onerror=alert(1)&gt;' in view.header.value
    assert '&lt;b&gt;nine&lt;/b&gt;' in view.gallery.value + view.pairs.value or 'nine' not in html
    assert HOSTILE + '0' in view.confusion.names  # axis labels are canvas text, not HTML


def test_page_problems_are_messages_listing_what_there_is(trained, monkeypatch, tmp_path):
    monkeypatch.setenv('FASTWATCH_STORE', str(trained['path']))
    monkeypatch.setenv('FASTWATCH_ROOT', str(tmp_path))
    copy_store(trained['path'], tmp_path / 'copy.db')
    assert type(dashboard(f"run={trained['run_id']}")).__name__ == 'VBox'
    for query, expected in [('run=nope', trained['run_id']), ('colour=red', 'run= and store='),
                            ('run=a&run=b', 'once'), ('store=missing.db', 'copy.db'),
                            ('store=../escape.db', 'inside the served folder'),
                            ('store=sqlite:///x.db', 'https URL'), ('store=http://x/a.db', 'https URL')]:
        page = dashboard(query).value
        assert expected in page and 'Traceback' not in page, query
    assert trained['run_id'] in dashboard('store=copy.db').children[1].value
    (tmp_path / 'other.db').write_text('not a store')
    assert 'not a fastwatch store' in dashboard('store=other.db').value


def test_viewers_cannot_change_the_store(trained, monkeypatch):
    monkeypatch.setenv('FASTWATCH_STORE', str(trained['path']))
    store = open_view_store()
    with pytest.raises(Exception, match='readonly'):
        store.write({}, {trained['run_id']: {'name': 'changed'}})
    with pytest.raises(RunNotFound):
        store.run('nope')


def test_parse_query():
    assert parse_query('run=abc&store=runs%2Fa.fastwatch&token=t') == {'run': 'abc', 'store': 'runs/a.fastwatch'}
    assert parse_query('') == parse_query(None) == {}
    with pytest.raises(QueryError): parse_query('run=')


def test_share_links():
    assert local_url('http://127.0.0.1:8866/', run='r1') == 'http://127.0.0.1:8866/?run=r1'
    url = binder_url('me/proj', 'main', run='r1', store='runs/a.fastwatch')
    assert url == ('https://mybinder.org/v2/gh/me/proj/main?urlpath='
                   'voila%2Frender%2Fapps%2Fdashboard.ipynb%3Frun%3Dr1%26store%3Druns%252Fa.fastwatch')
    env = {'BINDER_LAUNCH_HOST': 'https://mybinder.org/', 'BINDER_REQUEST': 'v2/gh/me/proj/main',
           'BINDER_PERSISTENT_REQUEST': 'v2/gh/me/proj/0123abc'}
    assert binder_url_from_env(env, run='r1').startswith('https://mybinder.org/v2/gh/me/proj/0123abc?urlpath=')
    assert binder_url_from_env({}) is None


def test_share_control_gives_the_binder_link_on_binder(trained):
    env = {'BINDER_LAUNCH_HOST': 'https://mybinder.org/', 'BINDER_REQUEST': 'v2/gh/me/proj/main'}
    view = Dashboard(open_store(trained['path'], readonly=True), environ=env)
    assert view.share_url()[0] == binder_url('me/proj', 'main', run=trained['run_id'])


def test_most_confused():
    matrix = np.array([[5, 2, 0], [4, 5, 1], [0, 0, 9]])
    assert most_confused(cells_of(matrix), ['a', 'b', 'c']) == [('b', 'a', 4), ('a', 'b', 2), ('b', 'c', 1)]


def test_packaged_notebook_is_the_app():
    assert filecmp.cmp(ROOT / 'apps' / 'dashboard.ipynb', ROOT / 'fastwatch' / 'view' / 'app' / 'dashboard.ipynb',
                       shallow=False)


def test_notebook_runs_headless_without_torch_or_fastai(trained, monkeypatch, tmp_path):
    monkeypatch.setenv('FASTWATCH_STORE', str(trained['path']))
    monkeypatch.setenv('QUERY_STRING', f"run={trained['run_id']}")
    nb = nbformat.read(ROOT / 'apps' / 'dashboard.ipynb', as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import re, sys\n"  # VmHWM: the kernel's peak memory (ru_maxrss would count its parent's, before exec)
        "peak = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) // 1024\n"
        "print(sorted(m for m in ('torch', 'fastai') if m in sys.modules), peak)"))
    NotebookClient(nb, kernel_name='python3', timeout=120, resources={'metadata': {'path': str(tmp_path)}}).execute()
    outputs = [out for cell in nb.cells for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == 'error']
    assert any('application/vnd.jupyter.widget-view+json' in out.get('data', {}) for out in outputs)
    assert any('bokeh.min.js' in out.get('data', {}).get('text/html', '') for out in outputs)
    modules, peak_mb = nb.cells[-1].outputs[0].text.rsplit(' ', 1)
    assert modules == '[]' and int(peak_mb) < 150
