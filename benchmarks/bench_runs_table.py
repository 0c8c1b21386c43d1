"""The runs table of a store of 1,000 runs against that of a store of 1 run, side by side in one run:

- the kernel's side: building the dashboard on the table (`Dashboard(store, view='runs')`: every run's summary and
  the first page of rows), median of 7;
- in chromium against the real `fastwatch serve`: opening `?view=runs` -> the first row drawn, a fresh kernel each
  visit (median of 5), and the bytes the page received (HTTP and WebSocket).

    python benchmarks/bench_runs_table.py
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).parents[1] / 'tests'))
from browser import launch, served, with_query  # noqa: E402

from fastwatch import open_store  # noqa: E402
from fastwatch.store import RunInfo, RunRecord  # noqa: E402
from fastwatch.store.tables import EpochRow  # noqa: E402
from fastwatch.view.dashboard import Dashboard  # noqa: E402

EPOCHS = 10


def record_runs(path: Path, n: int) -> None:
    "`n` finished runs of `EPOCHS` epochs each, with a metric and two settings, in one write."
    rng, now = np.random.default_rng(0), time.time()
    store, records, epochs = open_store(path), [], []
    for i in range(n):
        run_id = f'run{i:05d}'
        info = RunInfo(model='Sequential', batch_size=64, n_train=1437, n_valid=360, planned_epochs=EPOCHS,
                       metric_names=['error_rate'])
        record = RunRecord.new(run_id, f'run {i}', info, {'lr': 10.0 ** -int(rng.integers(1, 5)), 'arch': 'cnn'},
                               None, now - n + i)
        records.append(dataclasses.replace(record, status='finished'))
        for e in range(EPOCHS):
            loss = float(2 * np.exp(-e / 3) + rng.random() * 0.1)
            epochs.append(EpochRow(run_id, e, 0, False, (e + 1) * 22 - 1, loss, loss, {'error_rate': loss / 4}, 3.0,
                                   now))
    store.write({'runs': records, 'epochs': epochs})
    store.close()


def kernel_side(path: Path, repeats: int = 7) -> list[float]:
    "Seconds to build the dashboard on its runs table, outside a browser."
    times = []
    for _ in range(repeats):
        store = open_store(path, readonly=True)
        started = time.perf_counter()
        Dashboard(store, view='runs')
        times.append(time.perf_counter() - started)
        store.close()
    return times


def visit(browser, url: str) -> tuple[float, int]:
    "Seconds from opening `url` in a fresh browser context to the table's first row drawn, and the bytes received."
    context = browser.new_context()
    page, received = context.new_page(), []
    page.on('requestfinished', lambda r: received.append(r.sizes()['responseBodySize']
                                                         + r.sizes()['responseHeadersSize']))
    page.on('websocket', lambda w: w.on('framereceived', lambda f: received.append(len(f))))
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_selector('.fw-rt-row button', timeout=60_000)
    seconds = time.perf_counter() - started
    page.wait_for_load_state('networkidle')
    page.close(run_before_unload=True)
    context.close()
    return seconds, sum(received)


def in_browser(browser, url: str, repeats: int = 5, pause: float = 6) -> tuple[list[float], list[int]]:
    "`visit` `repeats` times, `pause` s apart: the next preheated kernel starts, as between two visitors."
    visits = []
    for _ in range(repeats):
        time.sleep(pause)
        visits.append(visit(browser, url))
    times, weights = zip(*visits)
    return list(times), list(weights)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        folder = Path(tmp)
        for n in (1, 1000): record_runs(folder / f'runs{n}.db', n)
        kernel = {n: kernel_side(folder / f'runs{n}.db') for n in (1, 1000)}
        browser = launch(playwright)
        with served(folder / 'runs1.db', folder, args=('--root', str(folder))) as url:
            shown = {n: in_browser(browser, with_query(url, store=f'runs{n}.db', view='runs')) for n in (1, 1000)}
        browser.close()
    for n in (1, 1000):
        times, weights = shown[n]
        print(f'{n:>5} runs: table built in the kernel in {np.median(kernel[n]) * 1000:.0f} ms (median of '
              f'{len(kernel[n])}); page opened to first row {np.median(times):.2f} s (median of {len(times)}: '
              + ', '.join(f'{t:.2f}' for t in times) + f'); {np.median(weights) / 1e6:.2f} MB received')
    print(f'1,000 runs / 1 run: kernel {np.median(kernel[1000]) / np.median(kernel[1]):.2f}x, '
          f'page {np.median(shown[1000][0]) / np.median(shown[1][0]):.2f}x')


if __name__ == '__main__':
    main()
