"""Watch-from-anywhere latency, in a real browser: a batch row recorded -> its point in the page's bokeh document,
through publishing (every `--every` s, to a folder served over https by a local WebDAV server) and following
(`fastwatch serve` with `?store=https://127.0.0.1:…/RUN/`). Target: p95 < every + 5 s.

A synthetic run is recorded by the real background writer at `--rate` batches a second, published by its hook.

    python benchmarks/bench_publish.py                 # every 2 s, 60 s of recording
    python benchmarks/bench_publish.py --every 30 --seconds 240
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).parents[1] / 'tests'))
from browser import launch, self_signed_certificate, served, with_query  # noqa: E402
from helpers import batch_row, start_synthetic_run  # noqa: E402
from storage_server import dav_server  # noqa: E402

from fastwatch import open_store  # noqa: E402
from fastwatch.record.network import PublishListener  # noqa: E402
from fastwatch.record.writer import Writer  # noqa: E402
from fastwatch.remote.protocol import Publisher  # noqa: E402

LAST_STEP_JS = """() => { for (const doc of (window.Bokeh ? Bokeh.documents : []))
  for (const model of doc._all_models.values()) if (model.name && model.name.startsWith('loss:'))
    return model.data.x.length ? model.data.x[model.data.x.length - 1] : -1;
  return -1; }"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--every', type=float, default=2.0, help='publish_every, seconds')
    parser.add_argument('--seconds', type=float, default=60.0, help='how long the run records')
    parser.add_argument('--rate', type=float, default=20.0, help='batches a second')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cert, key = self_signed_certificate(tmp)
        os.environ.update(SSL_CERT_FILE=str(cert), FASTWATCH_ALLOW_PRIVATE_URLS='1')
        with dav_server(tmp / 'site', (cert, key)) as dav:
            store, run_id = tmp / 'train.db', 'benchpublish1'
            writer = Writer.for_store(store)
            start_synthetic_run(writer, run_id, 'bench')
            writer.listeners.append(PublishListener(Publisher(str(store), run_id, str(dav.folder / 'runs'),
                                                              every=args.every, url=dav.url + 'runs/')))
            writer.add_batch(batch_row(run_id, 0))
            assert writer.flush(timeout=30)
            while not (dav.folder / 'runs' / run_id / 'index.json').exists(): time.sleep(0.1)
            open_store(tmp / 'served.db').close()
            with served(tmp / 'served.db', tmp, args=('--allow-private-urls',)) as url, sync_playwright() as pw:
                browser = launch(pw)
                page = browser.new_page()
                page.goto(with_query(url, store=f'{dav.url}runs/{run_id}/'))
                page.wait_for_function(f'({LAST_STEP_JS})() >= 0', timeout=60_000)
                seen: list[tuple[float, int]] = []  # (time, last step shown)
                step, started, next_row = 1, time.time(), time.time()
                while time.time() - started < args.seconds:
                    now = time.time()
                    while next_row <= now:
                        writer.add_batch(batch_row(run_id, step, 1 / (step + 1), smooth_loss=1.0))
                        step, next_row = step + 1, next_row + 1 / args.rate
                    seen.append((time.time(), page.evaluate(LAST_STEP_JS)))
                    time.sleep(0.05)
                browser.close()
            writer.end_run(run_id, 'finished')
            writer.flush(timeout=30)
        rows = open_store(store, readonly=True).batches(run_id)
    times, last_shown = np.array([t for t, _ in seen]), np.array([s for _, s in seen])
    latencies = []
    for s, recorded in zip(rows['step'], rows['time']):
        shown = np.flatnonzero(last_shown >= s)
        if s > 0 and len(shown): latencies.append(times[shown[0]] - recorded)
    latencies = np.array(latencies)
    print(f'publish_every {args.every:g} s, {args.rate:g} batches/s for {args.seconds:g} s: {len(latencies)} of '
          f'{len(rows["step"]) - 1} batch rows reached the browser')
    print(f'latency batch row -> point in the browser: p50 {np.percentile(latencies, 50):.2f} s, '
          f'p95 {np.percentile(latencies, 95):.2f} s, max {latencies.max():.2f} s '
          f'(target p95 < {args.every + 5:g} s)')


if __name__ == '__main__':
    main()
