"""End to end: a real `fastwatch serve`, Debian's chromium (playwright), and a training in another process."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from browser import (
    CHROMIUM,
    kernel_processes,
    kernels,
    open_dashboard,
    page_kernel,
    points,
    served,
    train_in_background,
    wait_for_charts,
    wait_for_points,
    with_query,
)
from helpers import train, wait_for

from fastwatch import open_store
from fastwatch.demo.digits import digits_dls, digits_folder
from fastwatch.view.server import PREHEATED_KERNELS

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f'no chromium at {CHROMIUM} (.ci/run installs it)')
HOSTILE = '<img src=x onerror=alert(1)>'
ORPHAN_SECONDS = 5  # the server shuts down a kernel idle with no page connected this long (default 60)


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "A store holding a finished run with HTML in its run and class names, served by `fastwatch serve`."
    folder = tmp_path_factory.mktemp('site')
    names = [f'{HOSTILE}{i}' for i in range(10)]
    train(digits_dls(digits_folder(folder / 'digits', per_class=30, class_names=names)), folder / 'store.db',
          epochs=1, name=HOSTILE)
    with served(folder / 'store.db', folder, config={'DashboardServer': {'orphan_timeout': ORPHAN_SECONDS}}) as url:
        yield {'url': url, 'store': folder / 'store.db', 'run_id': open_store(folder / 'store.db').runs()[0].id}


def test_a_run_page_shows_charts_confusion_gallery_and_names_as_text(site, page):
    open_dashboard(page, with_query(site['url'], run=site['run_id']))
    store = open_store(site['store'], readonly=True)
    wait_for_points(page, store.counts(site['run_id'])['batches'])
    assert page.evaluate('Bokeh.documents.some(d => [...d._all_models.values()].some('
                         "m => m.text === 'Confusion matrix'))")
    page.wait_for_selector('.fw-gallery img')
    page.wait_for_function("[...document.querySelectorAll('.fw-gallery img')].every(i => i.complete)")
    widths = page.eval_on_selector_all('.fw-gallery img', 'imgs => imgs.map(i => i.naturalWidth)')
    assert len(widths) == len(store.top_losses(site['run_id'])) and min(widths) > 0
    assert HOSTILE in page.inner_text('.fw-header')
    assert page.locator('img[src="x"]').count() == 0 and page.dialogs == []
    assert site['run_id'] in page.input_value('.fw-share-url')


def test_hovering_the_charts_shows_exact_values(site, page):
    open_dashboard(page, with_query(site['url'], run=site['run_id']))
    boxes = page.eval_on_selector_all('canvas', 'cs => cs.map(c => c.getBoundingClientRect().toJSON())')
    shown = set()
    for box in [b for b in boxes if b['width'] > 100 and b['height'] < 300]:  # the series charts, not the matrix
        for fraction in np.linspace(0.15, 0.85, 15):  # along the bottom of the plot: through bars and shaded fits
            page.mouse.move(box['x'] + box['width'] * fraction, box['y'] + box['height'] * 0.7)
            shown.update(' '.join(t.split()) for t in page.locator('div.bk-tooltip-content').all_inner_texts())
    epochs = open_store(site['store'], readonly=True).epochs(site['run_id'])
    assert {f"seconds: {e.duration:.1f} epoch: {e.epoch}" for e in epochs} & shown, shown
    assert {'phase: fit 1: frozen body', 'phase: fit 2: unfrozen'} <= shown


def live_training(digits_path: Path, store_path: Path, epochs: int, name: str = 'live') -> tuple:
    "A training in another process, once its run is live in the store: the process, and the store read-only."
    trainer = train_in_background(digits_path, store_path, epochs=epochs, name=name)
    store = open_store(store_path, readonly=True)
    wait_for(lambda: [run for run in store.runs() if run.state == 'live'] or trainer.poll() is not None)
    assert trainer.poll() is None, 'the training ended before it was seen'
    return trainer, store


def test_the_loss_series_grows_while_another_process_trains(site, page, digits_path):
    trainer, store = live_training(digits_path, site['store'], epochs=2)
    run_id = store.runs()[0].id
    open_dashboard(page, with_query(site['url'], run=run_id))
    seen = [points(page)]
    while trainer.poll() is None:
        time.sleep(0.3)
        seen.append(points(page))
    assert trainer.returncode == 0
    total = store.counts(run_id)['batches']
    wait_for_points(page, total, timeout=60)  # generous: the page shares two busy cores with the server and kernel
    assert len(set(seen)) >= 3 and seen == sorted(seen)
    page.wait_for_function("document.querySelector('.fw-header').innerText.includes('finished')", timeout=60_000)


def test_pages_opened_at_once_each_get_every_widget_even_from_a_kernel_still_running_the_notebook(site, browser):
    """More pages at once than kernels preheated: a page whose kernel runs the notebook while the page loads gets
    every widget, as the pages of preheated kernels do (none shows a widget that failed to show)."""
    context = browser.new_context()
    pages = [context.new_page() for _ in range(PREHEATED_KERNELS + 1)]
    for page in pages: page.goto(with_query(site['url'], run=site['run_id']), wait_until='commit')
    for page in pages:
        wait_for_charts(page, timeout=90)
        page.wait_for_selector('body.fw-rendered', timeout=90_000)
        assert page.locator('.jupyter-widgets-error-widget, .widget-error').count() == 0
        assert HOSTILE in page.inner_text('.fw-header')
    context.close()


def test_the_page_follows_the_run_again_after_its_connection_to_the_kernel_drops(site, page, digits_path):
    "The page's kernel connection is made again (as after a network drop, by @jupyterlab/services): no point lost."
    trainer, store = live_training(digits_path, site['store'], epochs=2, name='reconnected')
    run_id = store.runs()[0].id
    open_dashboard(page, with_query(site['url'], run=run_id))
    page.evaluate('fastwatchPage.kernel.reconnect()')
    assert page.evaluate('fastwatchPage.kernel.connectionStatus') == 'connected'
    assert trainer.wait(120) == 0
    wait_for_points(page, store.counts(run_id)['batches'], timeout=60)
    page.wait_for_function("document.querySelector('.fw-header').innerText.includes('finished')", timeout=60_000)


def test_the_page_sanitizes_html_descriptions_as_the_widgets_manager_asks(site, page):
    "Widgets' HTML descriptions keep the manager's tags and attributes, and lose scripts, handlers and js: links."
    open_dashboard(page, with_query(site['url'], run=site['run_id']))
    clean = page.evaluate("""fastwatchPage.manager.inline_sanitize('<b onclick="f()">bold</b><script>f()</script>'
      + '<a href="javascript:f()">js</a><a href="https://fast.ai/">ok</a><img src="x" onerror="f()">'
      + '<span class="c" aria-label="l" data-x="1">s</span><iframe src="https://fast.ai/"></iframe>')""")
    assert clean == ('<b>bold</b><a>js</a><a href="https://fast.ai/">ok</a><img src="x">'
                     '<span class="c" aria-label="l">s</span>')


def test_the_page_waits_for_a_slow_kernel_to_send_every_widget_at_once(site, page):
    """A kernel that answers the request for every widget's state later than ipywidgets' 4 s (on a machine busy with
    a training and many pages) is waited for: the page does not fall back to asking widget by widget."""
    open_dashboard(page, with_query(site['url'], run=site['run_id']))
    kernel = kernel_processes(site['url'])[page_kernel(page)]
    page.evaluate("""() => { const { manager } = fastwatchPage;
      manager._loadFromKernelModels = async () => { window.askedOneByOne = true; };
      window.loaded = manager._loadFromKernel().then(() => true); }""")
    os.kill(kernel, signal.SIGSTOP)  # given no CPU, as by a machine too busy for it
    try: time.sleep(6)
    finally: os.kill(kernel, signal.SIGCONT)
    assert page.evaluate('window.loaded') and not page.evaluate('window.askedOneByOne || false')


def test_a_closed_page_shuts_its_small_kernel_down(site, browser, digits_path, tmp_path):
    "Closing the tab shuts its kernel down at once: long before the server would take it for abandoned."
    trainer, store = live_training(digits_path, site['store'], epochs=3, name='closed page')
    with served(site['store'], tmp_path) as url:  # its own server: only this page's kernels, abandoned after 60 s
        preheated = wait_for(lambda: len(found := kernels(url)) == PREHEATED_KERNELS and found)
        context = browser.new_context()
        page = context.new_page()
        open_dashboard(page, with_query(url, run=store.runs()[0].id))  # its kernel follows the live run
        viewer = page_kernel(page)
        assert viewer in preheated and kernels(url)[viewer] < 150  # MB: the viewer's kernel, at its peak
        page.close(run_before_unload=True)  # as a tab is closed
        wait_for(lambda: viewer not in kernels(url), timeout=45)  # the page's beacon, not the 60 s orphan sweep
        wait_for(lambda: len(kernels(url)) == PREHEATED_KERNELS)  # refilled: only preheated ones, for the next pages
        context.close()
    assert trainer.wait(120) == 0


def test_pages_beyond_what_the_server_holds_wait_for_a_place_first_come_first_served(site, browser, tmp_path):
    "With --max-viewers 1, a second and a third page say they wait, and open by themselves in turn as pages close."
    from playwright.sync_api import expect
    with served(site['store'], tmp_path, args=('--max-viewers', '1')) as url:
        url = with_query(url, run=site['run_id'])
        context = browser.new_context()
        first, second, third = (context.new_page() for _ in range(3))
        open_dashboard(first, url)
        second.goto(url)
        expect(second.locator('.fw-waiting')).to_contain_text('it is next', timeout=30_000)
        third.goto(url)
        expect(third.locator('.fw-waiting')).to_contain_text('1 page ahead of it', timeout=30_000)
        first.close(run_before_unload=True)  # as a tab is closed: its place is the next page's
        wait_for_charts(second, timeout=60)  # its kernel never saw its ticket: it would have said `unknown parameter`
        expect(third.locator('.fw-waiting')).to_contain_text('it is next', timeout=30_000)
        second.close(run_before_unload=True)
        wait_for_charts(third, timeout=60)
        context.close()


def test_an_abandoned_page_loses_its_kernel(site, browser):
    context = browser.new_context()
    page = context.new_page()
    open_dashboard(page, with_query(site['url'], run=site['run_id']))
    viewer = page_kernel(page)
    context.close()  # gone without a word (no beforeunload): a crashed browser, a phone out of network
    wait_for(lambda: viewer not in kernels(site['url']), timeout=ORPHAN_SECONDS + 60)


def test_a_phone_sees_stacked_charts_and_no_horizontal_scrolling(site, browser):
    context = browser.new_context(viewport={'width': 390, 'height': 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    open_dashboard(page, with_query(site['url'], run=site['run_id']))
    page.wait_for_selector('.fw-gallery img')
    boxes = page.eval_on_selector_all('canvas', 'cs => cs.map(c => c.getBoundingClientRect().toJSON())')
    charts = {(round(box['left']), round(box['top']), round(box['right'])) for box in boxes if box['width'] > 100}
    assert len(charts) >= 5 and all(right <= 390 for _, _, right in charts)
    assert len({top for _, top, _ in charts}) == len(charts)  # one chart per row
    tops = page.eval_on_selector_all('.fw-item', 'items => items.map(i => i.getBoundingClientRect().top)')
    assert len(set(tops)) > 1  # the gallery wraps
    assert page.evaluate('document.documentElement.scrollWidth') <= 390
    context.close()


def test_an_unknown_run_is_a_message_listing_the_runs(site, page):
    page.goto(with_query(site['url'], run='nope'))
    page.wait_for_selector('.fw-message')
    text = page.inner_text('.fw-message')
    assert "no run 'nope'" in text and HOSTILE in text and 'Traceback' not in page.inner_text('body')
