"""Following a published run: live in real chromium on `fastwatch serve` with `?store=https://127.0.0.1:…`, with
conditional GETs, and a publisher that stopped shown as stale."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from browser import CHROMIUM, launch, points, self_signed_certificate, served, with_query
from helpers import batch_row, start_synthetic_run, wait_for
from storage_server import dav_server

from fastwatch import open_store
from fastwatch.errors import FetchError, StoreError
from fastwatch.record.writer import Writer
from fastwatch.remote import protocol
from fastwatch.remote.protocol import Publisher, follow
from fastwatch.view.dashboard import Dashboard

TRAIN = """import sys
from fastwatch import WatchCallback
from fastwatch.demo.digits import digits_dls, digits_learner
digits, store, target, every, url, epochs = sys.argv[1:]
learn = digits_learner(digits_dls(digits), cbs=WatchCallback(store=store, name='published', publish=target,
                                                              publish_every=float(every), publish_url=url))
with learn.no_bar(), learn.no_logging(): learn.fine_tune(int(epochs), base_lr=1e-2)
"""


@pytest.fixture
def dav(tmp_path, monkeypatch):
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv('SSL_CERT_FILE', str(cert))
    monkeypatch.setenv('FASTWATCH_ALLOW_PRIVATE_URLS', '1')
    with dav_server(tmp_path / 'site', (cert, key)) as server:
        server.cert_file = cert
        yield server


def runs_in(path: Path) -> list[dict]:
    "The runs of a store another process is creating: none until its tables are there."
    try: return open_store(path, readonly=True).runs()
    except StoreError: return []


def publish_in_background(digits: Path, store: Path, target: Path, url: str, every: float, epochs: int):
    "Another process that fine_tunes the small CNN, recording into `store` and publishing to `target`."
    return subprocess.Popen([sys.executable, '-c', TRAIN, str(digits), str(store), str(target), str(every), url,
                             str(epochs)], stdout=subprocess.DEVNULL)


def synthetic_run(path: Path, run_id: str, steps: int) -> Writer:
    "A run of `steps` batch rows recorded through the writer, still running."
    writer = Writer(f'sqlite:///{path}')
    start_synthetic_run(writer, run_id, 'synthetic')
    for step in range(steps): writer.add_batch(batch_row(run_id, step))
    assert writer.flush(timeout=30)
    return writer


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f'no chromium at {CHROMIUM}')
def test_a_published_run_streams_into_the_dashboard_until_it_finishes(digits_path, tmp_path, dav):
    open_store(tmp_path / 'served.db').close()
    env = {'SSL_CERT_FILE': str(dav.cert_file)}
    with served(tmp_path / 'served.db', tmp_path, args=('--allow-private-urls',), env=env) as url:
        training = publish_in_background(digits_path, tmp_path / 'train.db', dav.folder / 'runs', dav.url + 'runs/',
                                         every=1, epochs=8)
        playwright = pytest.importorskip('playwright.sync_api').sync_playwright().start()
        browser = launch(playwright)
        try:
            run_id = wait_for(lambda: runs_in(tmp_path / 'train.db'))[0].id
            wait_for(lambda: (dav.folder / 'runs' / run_id / 'index.json').exists())
            page = browser.new_page()
            page.goto(with_query(url, store=f'{dav.url}runs/{run_id}/'))
            page.wait_for_function('document.querySelector(".fw-age") !== null', timeout=60_000)
            first = wait_for(lambda: points(page) > 0 and points(page))
            assert training.poll() is None  # still training ...
            wait_for(lambda: points(page) > first)  # ... and the loss series grows
            assert 'published data' in page.inner_text('.fw-header')
            assert training.wait(180) == 0
            batches = open_store(tmp_path / 'train.db', readonly=True).counts(run_id)['batches']
            page.wait_for_function("document.querySelector('.fw-header').innerText.includes('finished')",
                                   timeout=60_000)
            wait_for(lambda: points(page) == batches)  # every row
            assert run_id in page.input_value('.fw-share-url') and 'mybinder.org' in page.input_value('.fw-share-url')
        finally:
            training.kill()
            browser.close()
            playwright.stop()

def test_the_index_is_polled_with_conditional_gets_and_only_new_segments_are_fetched(tmp_path, dav):
    writer = synthetic_run(tmp_path / 'store.db', 'conditionalgets', 100)
    publisher = Publisher(str(tmp_path / 'store.db'), 'conditionalgets', str(dav.folder / 'runs'), every=1,
                          url=dav.url + 'runs/')
    assert publisher.publish()
    mirror = follow(publisher.url, tmp_path / 'downloads')
    follower = mirror.follower
    follower.close()  # polled by hand from here
    assert not follower.sync()
    index_gets = [r for r in dav.app.requests if r[0] == 'GET' and r[1].endswith('index.json')]
    assert [r[3] for r in index_gets] == [200, 304]
    for step in range(100, 150): writer.add_batch(batch_row('conditionalgets', step, 0.5))
    assert writer.flush(timeout=30) and publisher.publish()
    before = len(dav.app.requests)
    follower._mirror = open_store(follower.path)
    assert follower.sync()
    fetched = [r[1].rsplit('/', 1)[1] for r in dav.app.requests[before:] if r[0] == 'GET']
    assert fetched == ['index.json', '00000002.fastwatch']
    assert mirror.counts('conditionalgets')['batches'] == 150


def test_a_publisher_that_stopped_is_stale_not_live(tmp_path, dav, monkeypatch):
    synthetic_run(tmp_path / 'store.db', 'stoppedpublisher', 10)
    publisher = Publisher(str(tmp_path / 'store.db'), 'stoppedpublisher', str(dav.folder / 'runs'), every=1,
                          url=dav.url + 'runs/')
    assert publisher.publish()
    mirror = follow(publisher.url, tmp_path / 'downloads')
    assert mirror.run('stoppedpublisher').state == 'live'  # though its heartbeat is older than a local run's
    monkeypatch.setattr(protocol, 'stale_after', lambda every: 0.5)  # instead of waiting 2 * every + 20 s
    run = wait_for(lambda: (run := mirror.run('stoppedpublisher')).state == 'stale' and run)
    assert run.published_age > 0.5
    page = Dashboard(mirror, 'stoppedpublisher', store_param=publisher.url)
    assert 'fw-stale' in page.header.widget.value and 'published data 00:0' in page.header.widget.value
    assert page.share.url.startswith('https://mybinder.org/v2/gh/fastwatch/fastwatch/main?')


def test_a_url_that_is_no_published_run_is_one_clear_error(tmp_path, dav):
    (dav.folder / 'other').mkdir()
    (dav.folder / 'other' / 'index.json').write_text('{"something": "else"}')
    with pytest.raises(StoreError, match='is not a published fastwatch run'):
        follow(f'{dav.url}other/', tmp_path)
    with pytest.raises(FetchError, match='the server answered 404'):
        follow(f'{dav.url}missing/', tmp_path)
    assert not list(tmp_path.glob('followed-*'))  # no mirror is left behind
