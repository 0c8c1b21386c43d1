"""The dashboard's logic, against stores written by real short trainings: no browser (see test_browser.py)."""
from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
from helpers import copy_run, train, wait_for
from nbclient import NotebookClient

from fastwatch import RunNotFound, StoreError, open_store
from fastwatch.demo.digits import digits_dls, digits_folder
from fastwatch.links import binder_url
from fastwatch.store.decisions import UNDO, decide
from fastwatch.view.dashboard import Dashboard, _likely_dashboard, _shows, dashboard
from fastwatch.view.feed import RunFeed, fit_spans
from fastwatch.view.page import open_view_store

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
    header, charts, panel = view.header.widget.value, view.chart_grid.charts, view.epoch_panel
    assert view.run_id == run_id and view.run_list.picker.value == run_id
    assert 'digits' in header and 'finished' in header and run_id in header
    n_batches, epochs = store.counts(run_id)['batches'], store.epochs(run_id)
    assert charts['loss'].points(run_id, 'loss') == n_batches
    assert charts['loss'].points(run_id, 'valid_loss') == len(epochs)
    assert set(charts) >= {f'metric:{name}' for name in epochs[-1].metrics}
    assert panel.epoch.max == epochs[-1].epoch == panel.epoch.value
    matrix = store.confusion(run_id).matrix
    assert sum(panel.confusion.source.data['count']) == matrix.sum() == store.run(run_id).info.n_valid
    assert panel.gallery.value.count('<img') == len(store.top_losses(run_id))
    assert f'run={run_id}' in view.share.widget.value


def test_items_read_again_with_no_new_decision_keep_the_decisions_widgets(trained, tmp_path):
    """Each new epoch reads the items again: with no new decision the decisions' widgets stay as they are (none made
    and sent to the page again); a decision, and its undo, show at once."""
    copy_store(trained['path'], tmp_path / 'store.db')
    store, run_id = open_store(tmp_path / 'store.db'), trained['run_id']
    panel = Dashboard(store, run_id, owner=True).data_panel
    shown = panel.decisions.children
    panel.refresh()
    assert panel.decisions.children == shown and '0 decided' in shown[0].value
    decide(store, run_id, 'train', 5, 'train/5/again.png', 'delete')
    panel.refresh()
    assert '1 decided' in panel.decisions.children[0].value
    decide(store, run_id, 'train', 5, 'train/5/again.png', UNDO)
    panel.refresh()
    assert '0 decided' in panel.decisions.children[0].value


def test_epoch_slider_and_toggle_step_through_the_confusion_matrices(view, trained):
    store, run_id, panel = trained['store'], trained['run_id'], view.epoch_panel
    panel.epoch.value = panel.epoch.min
    first = store.confusion(run_id, panel.epoch.min).matrix
    assert panel.confusion.source.data['count'] == first.ravel().tolist()
    panel.normalised.value = True
    shares = np.array(panel.confusion.source.data['share']).reshape(first.shape)
    assert np.allclose(shares.sum(axis=1)[first.sum(axis=1) > 0], 1)
    assert panel.gallery.value.count('<img') == len(store.top_losses(run_id, panel.epoch.min))


def test_a_store_of_several_runs_opens_on_its_table_whose_rows_open_and_overlay_runs(trained, dls, tmp_path):
    path = tmp_path / 'two.db'
    train(dls, path, epochs=1, name='first')
    train(dls, path, epochs=1, name='second')
    view = Dashboard(open_store(path, readonly=True))
    newest, older = [run.id for run in view.store.runs()]
    assert view.run_id is None and view.run_view.layout.display == 'none' and '2 runs' in view.header.widget.value
    rows = [row for row in view.runs_table.rows if row.run_id]
    assert [row.run_id for row in rows] == [newest, older]  # newest first
    assert [row.open.description for row in rows] == ['second', 'first']
    rows[0].open.click()
    assert view.run_id == newest and view.run_view.layout.display is None and rows[0].tick.disabled
    rows[1].tick.value = True
    assert {run for run, _ in view.chart_grid.charts['loss'].sources} == {newest, older}
    assert view.chart_grid.charts['loss'].points(older, 'smooth_loss') == view.store.counts(older)['batches']
    view.run_list.picker.value = older
    assert list(view.feeds) == [older] and view.overlay == () and not rows[1].tick.value


def test_charts_over_steps_go_over_epochs_or_seconds_and_runs_of_other_lengths_line_up_by_epoch(trained, dls,
                                                                                                  tmp_path):
    store, run_id = trained['store'], trained['run_id']
    view = Dashboard(store, run_id)
    loss = lambda: view.chart_grid.charts['loss']  # noqa: E731 (made again on each axis)
    batches, epochs, run = store.batches(run_id), store.epochs(run_id), store.run(run_id)
    view.run_list.axis.value = 'epoch'
    xs = loss().sources[run_id, 'loss'].data['x']
    assert view.chart_grid.charts['lr'].fig.xaxis[0].axis_label == 'epoch' and len(xs) == len(batches['step'])
    assert loss().sources[run_id, 'valid_loss'].data['x'] == [e.epoch + 1 for e in epochs]  # each epoch's end
    first = epochs[0].step + 1  # the first batch of the second epoch: 1/n of the way through it
    assert xs[first] == pytest.approx(1 + 1 / (epochs[1].step - epochs[0].step))
    assert all(b > a for a, b in zip(xs, xs[1:])) and xs[-1] == len(epochs)
    view.run_list.axis.value = 'time'
    xs = np.array(loss().sources[run_id, 'loss'].data['x'])
    seconds = np.array(batches['time']) - run.created_at
    ends = [e.step for e in epochs]
    assert np.allclose(xs[ends], seconds[ends]) and np.allclose(xs[first], seconds[first])  # knots: exact
    assert np.abs(xs - seconds).max() < max(e.duration for e in epochs) / 4  # between: interpolated
    shorter = train(dls, tmp_path / 'two.db', epochs=1).watch.run_id  # fine_tune(1): 2 epochs, not 3
    copy_run(store, run_id, open_store(tmp_path / 'two.db'), 'longer')
    both = Dashboard(open_store(tmp_path / 'two.db', readonly=True), shorter)
    both.run_list.axis.value = 'epoch'
    both.show(shorter, ('longer',))
    sources = both.chart_grid.charts['loss'].sources
    assert [sources[i, 'loss'].data['x'][-1] for i in (shorter, 'longer')] == [2.0, 3.0]


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
    run_id, cursors, grew, loss = view.run_id, [], 0, view.chart_grid.charts['loss']
    while trainer.is_alive() or view.refresh():
        before = loss.points(run_id, 'loss')
        view.refresh()
        grew += loss.points(run_id, 'loss') > before
        cursors.append(view.feeds[run_id].cursor)
    trainer.join()
    view.refresh()
    steps = loss.sources[run_id, 'loss'].data['x']
    assert steps == store.batches(run_id)['step']  # every row once, in order: only what is new is read
    assert grew > 1 and [c for c in cursors if c is not None] == sorted(c for c in cursors if c is not None)
    assert view.feeds[run_id].run.state == 'finished' and 'finished' in view.header.widget.value
    assert view.epoch_panel.epoch.value == store.epochs(run_id)[-1].epoch


def test_a_preheated_kernels_dashboard_is_brought_up_to_date_for_the_page_of_its_store(trained, dls, tmp_path,
                                                                                      monkeypatch):
    """A preheated kernel builds the served store's newest run while it waits for its page: the page that asks for
    that run gets it with everything recorded meanwhile, a page that asks for another run of the store gets that run
    shown in it, and a page that asks for anything else is not given it."""
    from fastai.callback.core import Callback
    path, built = tmp_path / 'preheated.db', threading.Event()

    class WaitsForTheGuess(Callback):
        "The training goes on once the guess is built from its first epoch."
        def after_epoch(self): built.wait(120)
    trainer = threading.Thread(target=train, args=(dls, path, 2), kwargs={'extra_cbs': [WaitsForTheGuess()]})
    trainer.start()
    monkeypatch.setenv('FASTWATCH_STORE', str(path))

    def opened():
        try: return open_store(path, readonly=True)
        except StoreError: return None  # not created yet
    store = wait_for(opened)
    run_id = wait_for(lambda: store.runs() and store.counts(store.runs()[0].id)['batches'] and store.runs()[0].id)
    likely = _likely_dashboard({})
    loss, early = likely.chart_grid.charts['loss'], likely.chart_grid.charts['loss'].points(run_id, 'loss')
    built.set()
    trainer.join()
    assert likely.run_id == run_id and 'live' in likely.header.widget.value
    assert _shows(likely, 'token=abc')  # no run named, of a store of that run alone
    assert early < loss.points(run_id, 'loss') == store.counts(run_id)['batches']
    assert loss.sources[run_id, 'loss'].data['x'] == store.batches(run_id)['step']
    assert 'finished' in likely.header.widget.value
    assert likely.epoch_panel.epoch.value == store.epochs(run_id)[-1].epoch
    assert _shows(likely, f'run={run_id}')
    assert not any(_shows(likely, query) for query in (f'run={trained["run_id"]}', 'view=runs', 'store=other.db',
                                                        f'run={run_id}&view=runs', 'colour=red'))
    copy_run(trained['store'], trained['run_id'], open_store(path), 'newer', created_at=time.time())
    assert not _shows(likely, '')  # a page of a store of several opens on its table
    assert _shows(likely, f'run={run_id}') and likely.run_id == run_id
    assert _shows(likely, 'run=newer') and likely.run_id == 'newer'  # another run of the store: shown in it
    newer = likely.chart_grid.charts['loss']
    assert newer.points('newer', 'loss') == store.counts('newer')['batches'] and 'newer' in likely.header.widget.value


async def until(condition, timeout: float = 120.0) -> None:
    "Let the event loop run until `condition()` holds; fail after `timeout` s."
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f'not true after {timeout} s'
        await asyncio.sleep(0.05)


def labels(view) -> list[str]: return [label for label, _ in view.run_list.picker.options]


def test_the_live_loop_keeps_watching_the_store_and_shows_runs_started_later(trained, dls, tmp_path):
    "The page of a finished run shows a run started after it opened, live, then finished; the loop goes on."
    path = tmp_path / 'later.db'
    copy_store(trained['path'], path)
    view = Dashboard(open_store(path, readonly=True), trained['run_id'])
    view.policy.runs_every = 0.5
    seen = set()

    async def watch() -> None:
        view.start()
        trainer = threading.Thread(target=train, args=(dls, path, 2), kwargs={'name': 'started later'})
        trainer.start()
        def later() -> str:
            label = next((text for text in labels(view) if text.startswith('started later')), '')
            seen.add(label.split(' · ')[1] if label else None)
            return label
        await until(lambda: 'finished' in later())
        trainer.join()
        assert not view.task.done()  # still watching the store
    asyncio.run(watch())
    assert 'live' in seen and view.run_id == trained['run_id']  # the shown run stays shown
    assert len(view.run_list.picker.options) == 2 and view.status.widget.value == ''
    assert [row.open.description for row in view.runs_table.rows if row.run_id][0] == 'started later'


def test_an_idle_page_costs_one_cheap_query_per_few_seconds(trained):
    "Where nothing runs, the page reads only the run list's version, once every `runs_every` s."
    from sqlalchemy import event
    view = Dashboard(open_store(trained['path'], readonly=True))
    view.policy.runs_every = 0.5
    statements = []
    event.listen(view.store.engine, 'before_cursor_execute', lambda *args: statements.append(args[2]))

    async def idle() -> float:
        started = time.monotonic()
        view.start()
        await until(lambda: len(statements) >= 4)
        return time.monotonic() - started
    seconds = asyncio.run(idle())
    assert all('count(*)' in sql and 'max(runs.updated_at)' in sql for sql in statements), statements
    assert len(statements) <= seconds / view.policy.runs_every + 1


def test_a_store_that_hangs_is_a_message_and_the_page_keeps_answering(trained, tmp_path):
    """A snapshot store (rollback journal) locked by another process makes every read wait: the page says the store
    is not answering, its event loop keeps running, and it reads again once the lock is gone."""
    path = tmp_path / 'locked.fastwatch'
    copy_store(trained['path'], path)
    with sqlite3.connect(path) as conn: conn.execute('PRAGMA journal_mode=DELETE')
    view = Dashboard(open_store(path, readonly=True))
    view.reads.timeout, view.policy.runs_every = 1.0, 0.2
    locker = sqlite3.connect(path, isolation_level=None)
    ticks = []

    async def hang() -> None:
        view.start()
        locker.execute('BEGIN EXCLUSIVE')
        async def heartbeat():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.05)
        beating = asyncio.get_running_loop().create_task(heartbeat())
        await until(lambda: 'has not answered' in view.status.widget.value, timeout=60)
        answering = len(ticks)
        await asyncio.sleep(0.5)
        assert len(ticks) > answering  # the loop runs on while the store hangs: widgets still answer
        locker.execute('ROLLBACK')
        await until(lambda: view.status.widget.value == '', timeout=60)
        beating.cancel()
        assert not view.task.done()  # still following
    asyncio.run(hang())
    locker.close()


def test_names_from_the_store_are_shown_escaped(hostile):
    view = Dashboard(hostile)
    panel = view.epoch_panel
    html = view.header.widget.value + panel.gallery.value + panel.pairs.value
    assert '<img src=x' not in html.replace("<img src='data:", '')
    assert '&lt;img src=x onerror=alert(1)&gt;' in view.header.widget.value
    assert '&lt;b&gt;nine&lt;/b&gt;' in panel.gallery.value + panel.pairs.value or 'nine' not in html
    assert HOSTILE + '0' in panel.confusion.names  # axis labels are canvas text, not HTML


def test_page_problems_are_messages_listing_what_there_is(trained, monkeypatch, tmp_path):
    monkeypatch.setenv('FASTWATCH_STORE', str(trained['path']))
    monkeypatch.setenv('FASTWATCH_ROOT', str(tmp_path))
    copy_store(trained['path'], tmp_path / 'copy.db')
    assert type(dashboard(f"run={trained['run_id']}")).__name__ == 'VBox'
    for query, expected in [('run=nope', trained['run_id']), ('colour=red', 'store= and view='),
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


def test_share_control_gives_the_binder_link_on_binder(trained):
    env = {'BINDER_LAUNCH_HOST': 'https://mybinder.org/', 'BINDER_REQUEST': 'v2/gh/me/proj/main'}
    view = Dashboard(open_store(trained['path'], readonly=True), environ=env)
    assert view.share.url == binder_url('me/proj', 'main', run=trained['run_id'])


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
