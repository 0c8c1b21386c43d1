"""The dashboard where people train: `WatchCallback(show=True)` in a real JupyterLab and Notebook 7 (headless
chromium), in a notebook run by nbclient, and in a script; and a first run that reads like fastai's."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from browser import CHROMIUM, POINTS_JS, free_port, jupyter, run_all_cells
from helpers import wait_for
from nbclient import NotebookClient

from fastwatch import open_store

ROOT = Path(__file__).parent.parent
TRAIN_CELL = """import time
from fastai.callback.core import Callback
from fastwatch import WatchCallback
from fastwatch.demo.digits import digits_dls, digits_learner

class Slowly(Callback):
    "Slow enough to be watched: a moment after each training batch."
    def after_batch(self):
        if self.training: time.sleep({pause})

learn = digits_learner(digits_dls({digits!r}), cbs=[WatchCallback(store={store!r}, show=True), Slowly()])
learn.fine_tune({epochs}, base_lr=1e-2)"""
# While the cell runs: the points of the summary's smoothed loss (SVG). Once it has finished, from the page's bokeh
# documents: a chart's points (POINTS_JS) and the confusion matrix's counts.
SUMMARY_POINTS_JS = """() => { const line = document.querySelector('.fw-svg-line[data-series="smoothed"]');
  return line ? line.getAttribute('points').trim().split(/\\s+/).length : 0; }"""
COUNTS_JS = """() => { for (const doc of (window.Bokeh ? Bokeh.documents : []))
  for (const model of doc._all_models.values()) if (model.data && model.data.count) return Array.from(model.data.count);
  return null; }"""


def notebook(folder: Path, digits: Path, store: Path, epochs: int, pause: float) -> Path:
    "A notebook whose one cell fine_tunes the digits CNN with `WatchCallback(show=True)`."
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(TRAIN_CELL.format(digits=str(digits), store=str(store), epochs=epochs,
                                                              pause=pause))]
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    path = folder / 'train.ipynb'
    nbformat.write(nb, path)
    return path


def busy(page) -> bool:
    "Whether the notebook's cell is still running (its prompt shows `[*]`)."
    return '*' in page.inner_text('.jp-CodeCell .jp-InputPrompt')


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f'no chromium at {CHROMIUM} (.ci/run installs it)')
@pytest.mark.parametrize('app', ['lab', 'notebook'])
def test_the_cell_that_trains_shows_the_live_dashboard(app, digits_path, tmp_path, page):
    folder = tmp_path / 'notebooks'
    folder.mkdir()
    notebook(folder, digits_path, tmp_path / 'store.db', epochs=3, pause=0.15)
    with jupyter(folder, app) as (base, token):
        path = 'lab/tree/train.ipynb' if app == 'lab' else 'notebooks/train.ipynb'
        page.goto(f'{base}{path}?token={token}')
        page.wait_for_selector('.jp-CodeCell', timeout=120_000)
        page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=120_000)  # kernel ready
        run_all_cells(page)
        page.wait_for_function(f'({SUMMARY_POINTS_JS})() > 0', timeout=120_000)  # under the cell, while it trains
        seen, epoch_shown = [], False
        while busy(page):
            seen.append(page.evaluate(SUMMARY_POINTS_JS))
            epoch_shown = epoch_shown or bool(page.locator('.fw-matrix').count() and page.locator('.fw-gallery img')
                                              .count())
            time.sleep(0.5)
        assert len(set(seen)) >= 3 and seen == sorted(seen), seen  # the loss chart grew while the cell ran ...
        assert epoch_shown  # ... and an epoch's confusion matrix and top losses came meanwhile
        store = open_store(tmp_path / 'store.db', readonly=True)
        [run] = store.runs()
        # Once the cell has finished, the interactive dashboard: every batch, the run's end, the last epoch.
        page.wait_for_function(f'({POINTS_JS})("loss") == {store.counts(run.id)["batches"]}', timeout=60_000)
        header = page.locator('.fw-header')
        wait_for(lambda: 'finished' in header.inner_text(), timeout=30)
        assert page.locator('.fw-gallery img').count() == len(store.top_losses(run.id))
        # After the cell, the view answers: the epoch slider shows another epoch's matrix.
        latest = page.evaluate(COUNTS_JS)
        assert sum(latest) == store.run(run.id).info.n_valid
        readout = page.locator('.widget-readout').first
        readout.click()
        page.keyboard.press('Control+A')
        page.keyboard.type('0')
        page.keyboard.press('Enter')
        first = store.confusion(run.id, 0).matrix.ravel().tolist()
        expected = json.dumps(json.dumps(first, separators=(',', ':')))
        page.wait_for_function(f'JSON.stringify(({COUNTS_JS})()) === {expected}', timeout=30_000)
        assert first != latest
        page.screenshot(path=str(tmp_path / f'notebook-{app}.png'))


def test_a_notebook_run_headless_has_the_dashboard_in_its_outputs(digits_path, tmp_path):
    path = notebook(tmp_path, digits_path, tmp_path / 'store.db', epochs=1, pause=0)
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell('import time; time.sleep(3)'))  # the view's last updates land
    NotebookClient(nb, kernel_name='python3', timeout=300, resources={'metadata': {'path': str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    assert not [out for out in outputs if out.output_type == 'error']
    assert any('application/vnd.jupyter.widget-view+json' in out.get('data', {}) for out in outputs)
    assert not any('fastwatch: recording run' in out.get('text', '') for out in outputs)  # the view says it all
    state = nb.metadata.widgets['application/vnd.jupyter.widget-state+json']['state'].values()
    store = open_store(tmp_path / 'store.db', readonly=True)
    [run] = store.runs()
    # The summary the cell drew as the fit ended: the run finished, its loss, its last epoch.
    values = [str(model['state'].get('value', '')) for model in state]
    assert any("class='fw-header'" in v and run.id in v and 'finished' in v for v in values)
    assert any('fw-svg-line' in v for v in values)
    assert any('fw-matrix' in v and v.count('<img') == len(store.top_losses(run.id)) for v in values)


SCRIPT = """import sys
from fastwatch import WatchCallback, show
from fastwatch.demo.digits import digits_dls, digits_learner
learn = digits_learner(digits_dls(sys.argv[1]), cbs=WatchCallback(store=sys.argv[2], show=True))
with learn.no_bar(): learn.fit(1)
print(show(store=sys.argv[2]))
with learn.no_bar(), learn.no_logging(): learn.fit(1)
"""


def test_in_a_script_show_prints_how_to_watch_and_a_quiet_fit_is_quiet(digits_path, tmp_path):
    store = tmp_path / 'store.db'
    done = subprocess.run([sys.executable, '-c', SCRIPT, str(digits_path), str(store)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if 'fastwatch' in line]
    first = open_store(store, readonly=True).runs()[-1].id
    assert lines == [f'fastwatch: recording run {first} into {store} - watch it: fastwatch serve --store {store} '
                     f'--run {first}',
                     f'fastwatch: watch it: fastwatch serve --store {store}'], done.stdout  # nothing of the quiet fit
    assert 'None' in done.stdout.splitlines()[-1] and done.stderr.count('fastwatch') == 0


def test_fastwatch_serve_prints_its_url_and_how_to_stop_and_nothing_else(trained):
    command = [sys.executable, '-c', 'from fastwatch.cli import main; main()', 'serve',
               '--store', str(trained['path']), '--port', str(free_port())]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    printed = [server.stdout.readline() for _ in range(3)]
    url = printed[1].split('open ', 1)[1].strip()
    assert 'fastwatch' in wait_for(lambda: opened(url), timeout=120)  # a page, rendered by one of its kernels
    server.send_signal(signal.SIGINT)  # as Ctrl-C does
    rest = server.communicate(timeout=60)[0]
    assert printed[0].startswith('fastwatch dashboard of ') and printed[2].strip() == 'Ctrl-C stops it'
    assert rest == '' and server.returncode == 0, rest  # no warnings, no traceback


def opened(url: str) -> str | None:
    "The page at `url`, or None while its server does not answer yet."
    try:
        with urllib.request.urlopen(url + '&run=x', timeout=60) as page: return page.read().decode()
    except OSError: return None


def test_the_demo_prints_what_a_user_needs_and_nothing_of_voila_or_torch(tmp_path):
    "`fastwatch demo` (what `make demo` runs): the URL and how to stop, the training's lines, fastai's progress."
    done = subprocess.run([sys.executable, '-c', 'from fastwatch.cli import main; main()', 'demo', '--epochs', '1',
                           '--exit-after', '--port', str(free_port()), '--store', str(tmp_path / 'demo.db')],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    lines = [line for line in out.splitlines() if 'fastwatch' in line or 'open http' in line or 'Ctrl-C' in line]
    assert lines[0].startswith('fastwatch dashboard of ') and lines[1].strip().startswith('open http://127.0.0.1:')
    assert lines[2].strip() == 'Ctrl-C stops it' and 'fastwatch: recording run' in lines[-1]
    for noise in ('WARNING', 'Warning', 'Traceback', 'not trusted', 'without encryption'):
        assert noise not in out, out[-3000:]
