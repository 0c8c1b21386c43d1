"""Many viewers of one run while it trains: one `fastwatch serve` on this machine, N pages opened at the same moment
in one chromium (N = 1, 3, 10), a fine_tune of the digits CNN recording meanwhile.

For each N: seconds from opening to the page's first chart drawn with data (p50, p95, the slowest), the pages that
drew none within the limit, each viewer's kernel (peak RSS), the kernels the server held, and the store queries per
second the N pages add while they follow the run (every statement the server's kernels execute, counted by a
`sitecustomize` module on their path that listens to SQLAlchemy's `before_cursor_execute`, over `--window` s once
the pages have drawn, less the same count with no page open).

    python benchmarks/bench_viewers.py [--viewers 1 3 10] [--limit 300] [--window 20] [--max-starting N]

`--max-starting`: the pages the server renders at once (`DashboardServer.max_starting`; the others wait for a
place); default the server's.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).parents[1] / 'tests'))
from browser import POINTS_JS, kernels, launch, served, train_in_background  # noqa: E402
from helpers import wait_for  # noqa: E402

from fastwatch import open_store  # noqa: E402
from fastwatch.demo.digits import digits_folder  # noqa: E402
from fastwatch.view.server import PREHEATED_KERNELS  # noqa: E402

# Imported by every Python process of the server (its kernels too) as it starts: one byte a store query, into a file
# of the process's own.
COUNT_QUERIES = """import os
from sqlalchemy import event
from sqlalchemy.engine import Engine
_counted = os.open(os.path.join({counts!r}, str(os.getpid())), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
event.listen(Engine, 'before_cursor_execute', lambda *args: os.write(_counted, b'.'))
"""


def counting_queries(folder: Path) -> tuple[dict, Path]:
    "The environment in which the server's processes count their store queries, and the folder of the counts."
    counts = folder / 'queries'
    counts.mkdir(parents=True)
    (folder / 'sitecustomize.py').write_text(COUNT_QUERIES.format(counts=str(counts)))
    return {'PYTHONPATH': os.pathsep.join(filter(None, [str(folder), os.environ.get('PYTHONPATH')]))}, counts


def queries_per_second(counts: Path, window: float) -> float:
    "The store queries per second all the server's kernels make over the next `window` s."
    def total() -> int: return sum(f.stat().st_size for f in counts.iterdir())
    before = total()
    time.sleep(window)
    return (total() - before) / window


def open_at_once(browser, url: str, n: int, limit: float,
                 measure: Callable[[], float]) -> tuple[list[float], list[float], float]:
    """Open `n` pages at once: seconds until each drew a chart with data (inf: none within `limit`), kernel MB each,
    and what `measure()` gives once they have drawn, while they stay open."""
    contexts = [browser.new_context() for _ in range(n)]
    pages = [context.new_page() for context in contexts]
    started = time.perf_counter()
    for page in pages: page.goto(url, wait_until='commit')
    drawn: dict[int, float] = {}
    while len(drawn) < n and time.perf_counter() - started < limit:
        for i, page in enumerate(pages):
            if i in drawn: continue
            try: points = page.evaluate(POINTS_JS, 'loss')
            except Exception: points = -1  # the page is still navigating
            if points > 0: drawn[i] = time.perf_counter() - started
        time.sleep(0.2)
    memory, measured = list(kernels(url).values()), measure()
    for i, page in enumerate(pages):
        if i not in drawn: print(f'  a page that drew none shows: {page.inner_text("body")[:300]!r}', flush=True)
    for page, context in zip(pages, contexts):
        page.close(run_before_unload=True)
        context.close()
    return [drawn.get(i, float('inf')) for i in range(n)], memory, measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--viewers', type=int, nargs='+', default=[1, 3, 10])
    parser.add_argument('--limit', type=float, default=300, help='seconds a page may take to draw')
    parser.add_argument('--window', type=float, default=20, help='seconds over which the queries are counted')
    parser.add_argument('--max-starting', type=int, default=0, help="pages rendered at once (0: the server's default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        folder = Path(tmp)
        digits, store = digits_folder(folder / 'digits'), folder / 'team.db'
        open_store(store).close()
        counting, counts = counting_queries(folder / 'counting')
        browser = launch(playwright)
        config = {'DashboardServer': {'max_starting': args.max_starting}} if args.max_starting else None
        with served(store, folder, config=config, env=counting) as url:
            trainer = train_in_background(digits, store, epochs=200, name='watched')
            try:
                wait_for(lambda: open_store(store, readonly=True).runs(), timeout=120)
                for n in args.viewers:
                    wait_for(lambda: len(kernels(url)) <= PREHEATED_KERNELS, timeout=120)  # the last ones closed
                    time.sleep(10)  # the spares ready, as before visitors come
                    unwatched = queries_per_second(counts, args.window)
                    times, memory, queries = open_at_once(browser, url, n, args.limit,
                                                          lambda: queries_per_second(counts, args.window))
                    drawn = [t for t in times if np.isfinite(t)] or [float('nan')]
                    print(f'{n:>2} pages at once: first chart p50 {np.percentile(drawn, 50):.1f} s, '
                          f'p95 {np.percentile(drawn, 95):.1f} s, slowest {max(drawn):.1f} s; '
                          f'{sum(not np.isfinite(t) for t in times)} drew none within {args.limit:.0f} s; '
                          f'{len(memory)} kernels, '
                          f'{np.median(memory):.0f} MB each (median; max {max(memory):.0f} MB); '
                          f'{queries - unwatched:.1f} store queries/s added ({unwatched:.1f} with no page open); '
                          f'load average {os.getloadavg()[0]:.1f}', flush=True)
                assert trainer.poll() is None, 'the training ended before the last measurement'
            finally:
                trainer.kill()
        browser.close()


if __name__ == '__main__':
    main()
