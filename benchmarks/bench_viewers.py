"""Many viewers of one run while it trains: one `fastwatch serve` on this machine, N pages opened at the same moment
in one chromium (N = 1, 3, 10), a fine_tune of the digits CNN recording meanwhile.

For each N: seconds from opening to the page's first chart drawn with data (p50, p95, the slowest), the pages that
drew none within the limit, each viewer's kernel (its peak RSS, and its proportional set size: its share of the
memory the kernels take together, the libraries they all map counted once), the kernels the server held, and the
store queries per second the N pages add while they follow the run (every statement the server's kernels execute,
counted by a `sitecustomize` module on their path that listens to SQLAlchemy's `before_cursor_execute`, over
`--window` s once the pages have drawn, less the same count with no page open), and over that window the CPU each
page adds to the server with its kernels and to the browser, and the CPU the training is left.

    python benchmarks/bench_viewers.py [--viewers 1 3 10] [--limit 300] [--window 20] [--max-starting N]

`--max-starting`: the pages the server renders at once (`DashboardServer.max_starting`; the others wait for a
place); default the server's.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).parents[1] / 'tests'))
from browser import POINTS_JS, kernel_processes, kernels, launch, peak_mb, served, train_in_background  # noqa: E402
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


def proportional_mb(pid: int) -> float:
    """A process's proportional set size in MB: its own pages, and its share of those it shares with other processes
    (the libraries every kernel maps). Summed over the kernels, what they take of the machine's memory."""
    try: return int(re.search(r'Pss:\s+(\d+)', Path(f'/proc/{pid}/smaps_rollup').read_text())[1]) / 1024
    except (OSError, TypeError): return float('nan')  # a kernel that ended meanwhile


@dataclass
class Load:
    """What the processes did over a window: the store queries per second of all the server's kernels, and the CPU
    (cores) of the server with its kernels, of the browser, and of the training."""
    queries: float
    server: float
    browser: float
    training: float


def cpu_seconds(processes: list[psutil.Process]) -> float:
    "The CPU seconds the processes used so far (those that ended meanwhile count nothing)."
    total = 0.0
    for process in processes:
        try: total += sum(process.cpu_times()[:2])
        except psutil.Error: continue
    return total


def load_over(window: float, counts: Path, server: psutil.Process, training: psutil.Process) -> Load:
    "What the server, the browser and the training do over the next `window` s."
    def now() -> list[float]:
        groups = [[server, *server.children(recursive=True)],
                  [p for p in psutil.process_iter(['name']) if 'chrom' in (p.info['name'] or '')], [training]]
        return [sum(f.stat().st_size for f in counts.iterdir()), *map(cpu_seconds, groups)]
    before = now()
    time.sleep(window)
    return Load(*((after - then) / window for after, then in zip(now(), before)))


def open_at_once(browser, url: str, n: int, limit: float,
                 measure: Callable[[], Load]) -> tuple[list[float], list[float], list[float], Load]:
    """Open `n` pages at once: seconds until each drew a chart with data (inf: none within `limit`), each kernel's
    peak resident MB and its proportional MB, and what `measure()` gives once they have drawn, while they stay
    open."""
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
    pids = list(kernel_processes(url).values())
    memory, proportional, measured = [peak_mb(pid) for pid in pids], [proportional_mb(pid) for pid in pids], measure()
    for i, page in enumerate(pages):
        if i not in drawn: print(f'  a page that drew none shows: {page.inner_text("body")[:300]!r}', flush=True)
    for page, context in zip(pages, contexts):
        page.close(run_before_unload=True)
        context.close()
    return [drawn.get(i, float('inf')) for i in range(n)], memory, proportional, measured


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
            training = psutil.Process(trainer.pid)
            try:
                wait_for(lambda: open_store(store, readonly=True).runs(), timeout=120)
                server = psutil.Process(next(iter(wait_for(lambda: kernel_processes(url)).values()))).parent()
                for n in args.viewers:
                    wait_for(lambda: len(kernels(url)) <= PREHEATED_KERNELS, timeout=120)  # the last ones closed
                    time.sleep(10)  # the spares ready, as before visitors come
                    alone = load_over(args.window, counts, server, training)
                    times, memory, proportional, watched = open_at_once(
                        browser, url, n, args.limit, lambda: load_over(args.window, counts, server, training))
                    drawn = [t for t in times if np.isfinite(t)] or [float('nan')]
                    print(f'{n:>2} pages at once: first chart p50 {np.percentile(drawn, 50):.1f} s, '
                          f'p95 {np.percentile(drawn, 95):.1f} s, slowest {max(drawn):.1f} s; '
                          f'{sum(not np.isfinite(t) for t in times)} drew none within {args.limit:.0f} s; '
                          f'{len(memory)} kernels, '
                          f'{np.nanmedian(memory):.0f} MB each at their peak (median; max {np.nanmax(memory):.0f} MB), '
                          f'{np.nanmedian(proportional):.0f} MB proportional (median); '
                          f'{watched.queries - alone.queries:.1f} store queries/s added '
                          f'({alone.queries:.1f} with no page open); following, each page adds '
                          f'{(watched.server - alone.server) / n:.0%} of a core to the server and its kernels and '
                          f'{(watched.browser - alone.browser) / n:.0%} to the browser, and the training uses '
                          f'{watched.training:.0%} of a core ({alone.training:.0%} with no page open); '
                          f'load average {os.getloadavg()[0]:.1f}; each page: '
                          + ' '.join(f'{t:.1f}' for t in sorted(times)) + ' s', flush=True)
                assert trainer.poll() is None, 'the training ended before the last measurement'
            finally:
                trainer.kill()
        browser.close()


if __name__ == '__main__':
    main()
