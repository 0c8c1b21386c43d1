"""Many classes: recording and the dashboard for runs of 1,000 and 20,000 classes (a tiny linear model on random
features, really trained), in a real browser against a real `fastwatch serve`:

- recording: fit time, the stored confusion row's size, the per-pass values the collector holds;
- page weight: bytes transferred to the browser, HTTP and WebSocket (target < 5 MB);
- time to settle: opening the URL -> the confusion image drawn with its data (target < 10 s), and the time the
  page then takes to answer (a script round trip, the row-normalised toggle redrawn);
- the viewer kernel's peak resident memory (target < 150 MB).

    python benchmarks/bench_classes.py [--classes 1000 20000] [--screenshots DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).parents[1] / 'tests'))
from browser import kernels, launch, open_dashboard, page_kernel, served, with_query  # noqa: E402
from many_classes import train_many_classes  # noqa: E402

from fastwatch import open_store  # noqa: E402
from fastwatch.store.schema import confusion  # noqa: E402

# The confusion image's [rows, highest value] in the page's bokeh documents, or null before it has data.
IMAGE_JS = """() => { for (const doc of (window.Bokeh ? Bokeh.documents : []))
  for (const m of doc._all_models.values()) if (m.data && m.data.image && m.data.image.length) {
    const a = m.data.image[0]; let highest = 0;
    for (let i = 0; i < a.length; i++) if (a[i] > highest) highest = a[i];
    return [a.shape[0], highest]; }
  return null; }"""


def record(store: Path, n_classes: int) -> dict:
    "Train into `store`; what recording kept."
    started = time.perf_counter()
    learn = train_many_classes(store, n_classes, n_train=4000, n_valid=4000)
    seconds = time.perf_counter() - started
    db = open_store(store)
    run_id = db.runs()[0].id
    with db.engine.connect() as conn:
        stored = conn.execute(confusion.select().where(confusion.c.run_id == run_id)).first().counts
    return {'run_id': run_id, 'fit': seconds, 'stored': len(stored), 'cells': len(db.confusion(run_id).cells),
            'n_valid': len(learn.dls.valid_ds)}


def visit(browser, url: str, screenshot: Path | None) -> dict:
    "Open the page once: bytes received, seconds to the drawn confusion image, then to each answer; kernel memory."
    context = browser.new_context(viewport={'width': 1280, 'height': 1000})
    page, http, ws = context.new_page(), [], []
    page.on('requestfinished', lambda r: http.append(r.sizes()['responseBodySize'] + r.sizes()['responseHeadersSize']))
    page.on('websocket', lambda w: w.on('framereceived', lambda f: ws.append(len(f))))
    time.sleep(6)  # the server's preheated kernels are ready, as for a visitor
    started = time.perf_counter()
    open_dashboard(page, url, timeout=120)
    page.wait_for_function(f'({IMAGE_JS})() !== null', timeout=120_000)
    settled = time.perf_counter() - started
    started = time.perf_counter()
    page.evaluate('1 + 1')
    round_trip = time.perf_counter() - started
    started = time.perf_counter()
    page.get_by_text('row-normalised').click()
    page.wait_for_function(f'({IMAGE_JS})()[1] <= 1.0001', timeout=120_000)
    toggled = time.perf_counter() - started
    page.wait_for_load_state('networkidle')
    if screenshot: page.screenshot(path=str(screenshot), full_page=True)
    memory = kernels(url)[page_kernel(page)]
    page.close(run_before_unload=True)
    context.close()
    return {'http': sum(http), 'ws': sum(ws), 'settled': settled, 'round_trip': round_trip, 'toggled': toggled,
            'memory': memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--classes', type=int, nargs='+', default=[1000, 20000])
    parser.add_argument('--screenshots', type=Path, help='folder to save a screenshot of each page')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = launch(playwright)
        for n in args.classes:
            store = Path(tmp) / f'{n}.db'
            kept = record(store, n)
            print(f'## {n:,} classes ({kept["n_valid"]:,} validation items)')
            print(f'fit(1) with WatchCallback: {kept["fit"]:.1f} s; confusion stored as {kept["cells"]:,} cells in '
                  f'{kept["stored"] / 1e3:.1f} kB (dense int64: {n * n * 8 / 1e6:,.0f} MB)')
            with served(store, Path(tmp)) as url:
                shot = args.screenshots / f'confusion-{n}.png' if args.screenshots else None
                seen = visit(browser, with_query(url, run=kept['run_id']), shot)
            print(f'page weight: {(seen["http"] + seen["ws"]) / 1e6:.2f} MB ({seen["http"] / 1e6:.2f} MB HTTP, '
                  f'{seen["ws"] / 1e6:.2f} MB WebSocket)')
            print(f'settled (confusion image drawn) {seen["settled"]:.2f} s after opening; then a script round trip '
                  f'{seen["round_trip"] * 1e3:.0f} ms, row-normalised redrawn in {seen["toggled"]:.2f} s')
            print(f'viewer kernel peak RSS: {seen["memory"]:.0f} MB')
        browser.close()


if __name__ == '__main__':
    main()
