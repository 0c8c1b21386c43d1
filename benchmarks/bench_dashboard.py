"""Dashboard benchmarks, in a real browser against a real `fastwatch serve`:

- live latency: a batch row committed to the store -> the point in the page's bokeh document (target p95 < 1 s);
- first render: opening the URL -> charts drawn with their data, for runs of 1,000 and 1,000,000 steps (< 2 s), and
  for the link `fastwatch serve` prints to a store of one run;
- page weight: bytes transferred to the browser, HTTP and WebSocket (< 5 MB);
- memory of one viewer's kernel (< 150 MB).

    python benchmarks/bench_dashboard.py                      # all figures
    python benchmarks/bench_dashboard.py --screenshots docs   # also the README screenshots, during a real demo run
    python benchmarks/bench_dashboard.py --against CHECKOUT   # first render only: this version against another,
                                                              # one server each, first visits interleaved
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import numpy as np
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).parents[1] / 'tests'))
from browser import (  # noqa: E402
    POINTS_JS,
    free_port,
    jupyter,
    kernels,
    launch,
    open_dashboard,
    run_all_cells,
    served,
    with_query,
)

from fastwatch import open_store  # noqa: E402
from fastwatch.record.writer import Writer  # noqa: E402
from fastwatch.store import RunInfo, RunRecord  # noqa: E402
from fastwatch.store.records import FitInfo  # noqa: E402
from fastwatch.store.tables import BatchRow, EpochRow  # noqa: E402
from fastwatch.view.server import PREHEATED_KERNELS  # noqa: E402


def record_run(store: Path, steps: int, status: str = 'finished') -> str:
    "A run of `steps` synthetic batch rows (and 10 epochs), written by the real background writer."
    writer, run_id, now = Writer.for_store(store), uuid.uuid4().hex[:13], time.time()
    info = RunInfo(planned_epochs=10, metric_names=['error_rate'], fits=[FitInfo(0, 10)])
    writer.start_run(RunRecord.new(run_id, f'{steps:,} steps', info, {}, None, now))
    loss = 2 * np.exp(-np.arange(steps) / steps * 4) + np.random.default_rng(0).random(steps) * 0.3
    for step in range(steps):
        epoch = step * 10 // steps
        writer.add_batch(BatchRow(run_id, step, epoch, 0, False, float(loss[step]), float(loss[step]), 1e-3, 0.9, now,
                                  None))
        if (step + 1) * 10 // steps != epoch:
            writer.add_rows('epochs', [EpochRow(run_id, epoch, 0, False, step, float(loss[step]), float(loss[step]),
                                                {'error_rate': 0.1}, 1.0, now)])
    if status != 'running': writer.end_run(run_id, status)
    writer.flush(600)
    return run_id


# Run in each page from its start: notes, by the page's own clock (ms since the navigation began), when a chart's
# canvas is on the page and the loss series has its data. What a person sees, without the driver's polling, which
# waits behind the page's busy main thread.
FIRST_CHART_JS = "(() => { const points = " + POINTS_JS + """;
  const canvas = (root) => [...root.querySelectorAll('*')].some(
    (el) => el.tagName === 'CANVAS' || (el.shadowRoot && canvas(el.shadowRoot)));
  const check = () => { if (points('loss') > 0 && canvas(document)) window.firstChartMs = performance.now();
                        else requestAnimationFrame(check); };
  requestAnimationFrame(check); })()"""


@dataclass
class Visits:
    "First renders of a series of visits: wall seconds (the driver's: goto to its wait's end) and the page's own."
    wall: list[float] = field(default_factory=list)
    page: list[float] = field(default_factory=list)

    def open(self, context, url: str) -> None:
        "Open the URL in a new page of `context` (made by `timed_context`), time it, and close it as a tab."
        page = context.new_page()
        self.wall.append(open_dashboard(page, url, timeout=60))
        self.page.append(page.evaluate('window.firstChartMs') / 1000)
        page.close(run_before_unload=True)  # as a closed tab: Voila shuts the kernel down

    def __str__(self) -> str:
        return (f'median {np.median(self.wall):.2f} s wall, {np.median(self.page):.2f} s by the page\'s clock '
                f'(runs: {", ".join(f"{w:.2f}/{p:.2f}" for w, p in zip(self.wall, self.page))})')


def timed_context(browser):
    "A browser context whose pages note when they draw their first chart (`FIRST_CHART_JS`)."
    context = browser.new_context()
    context.add_init_script(FIRST_CHART_JS)
    return context


def first_render(browser, url: str, repeats: int = 5, pause: float = 6) -> tuple[Visits, Visits]:
    """From opening the URL to the charts drawn with data, each visit with a fresh kernel: a first visit (empty
    browser cache) and a second one in the same browser (cached scripts). `pause` s between visits lets Voila start
    the next preheated kernel, as between two visitors."""
    cold, warm = Visits(), Visits()
    for _ in range(repeats):
        context = timed_context(browser)
        for visits in (cold, warm):
            time.sleep(pause)
            visits.open(context, url)
        context.close()
    return cold, warm


def interleaved(browser, url: str, other_url: str, repeats: int = 7, pause: float = 6) -> tuple[Visits, Visits]:
    "First visits alternating between two servers of the same store, each in a fresh browser context."
    this, other = Visits(), Visits()
    for i in range(repeats):
        order = [(this, url), (other, other_url)]
        if i % 2: order.reverse()  # neither version always first after the pause
        for visits, at in order:
            time.sleep(pause)
            context = timed_context(browser)
            visits.open(context, at)
            context.close()
    return this, other


def page_weight(browser, url: str) -> tuple[int, int, list[float]]:
    """Bytes transferred over HTTP (as sent: compressed, with headers) and received over the kernel WebSocket,
    and the memory of the server's kernels while the page is open."""
    context = browser.new_context()
    page, http, ws = context.new_page(), [], []
    page.on('requestfinished', lambda r: http.append(r.sizes()['responseBodySize'] + r.sizes()['responseHeadersSize']))
    page.on('websocket', lambda w: w.on('framereceived', lambda f: ws.append(len(f))))
    time.sleep(6)
    open_dashboard(page, url)
    page.wait_for_load_state('networkidle')
    time.sleep(1)
    memory = list(kernels(url).values())
    page.close(run_before_unload=True)
    context.close()
    return sum(http), sum(ws), memory


def live_latency(browser, url: str, store: Path, rows: int = 60, every: float = 0.2) -> list[float]:
    """Seconds from a batch row's commit to its point in the page's bokeh document, one row every `every` s. Every row
    of the run, and its end, goes through the writer that started it, as a training's do: the store object that
    writes a run's batch rows keeps its open block summaries (`store/blocks.py`)."""
    run_id = record_run(store, 10, status='running')
    writer = Writer.for_store(store)  # the one that recorded the first 10 rows and keeps the run's heartbeat
    context = browser.new_context()
    page = context.new_page()
    time.sleep(6)
    open_dashboard(page, with_query(url, run=run_id))
    page.evaluate(f"""() => {{ window.seenAt = {{}}; setInterval(() => {{
        const n = ({POINTS_JS})('loss'); if (!(n in window.seenAt)) window.seenAt[n] = Date.now() / 1000; }}, 5); }}""")
    committed = {}
    for step in range(10, 10 + rows):
        writer.add_batch(BatchRow(run_id, step, 9, 0, False, 0.5, 0.5, 1e-3, 0.9, time.time(), None))
        assert writer.flush(10), f'row {step} was not written'
        committed[step + 1] = time.time()  # committed: the page then holds step + 1 points
        time.sleep(every)
    time.sleep(2)
    seen = {int(n): t for n, t in page.evaluate('window.seenAt').items()}
    writer.end_run(run_id, 'finished')
    writer.flush(10)
    page.close(run_before_unload=True)
    context.close()
    return [seen[n] - t for n, t in committed.items() if n in seen]


def screenshots(browser, out: Path, port: int) -> None:
    "Desktop and phone screenshots of the dashboard during a real `fastwatch demo` run."
    with tempfile.TemporaryDirectory() as tmp:
        demo = subprocess.Popen([sys.executable, '-c', 'from fastwatch.cli import main; main()', 'demo', '--epochs',
                                 '3', '--port', str(port), '--store', f'{tmp}/demo.db', '--exit-after'],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            url = next(line.split('open ', 1)[1].strip() for line in demo.stdout if 'open http' in line)
            store = None
            while store is None or not store.runs() or len(store.epochs(store.runs()[0].id)) < 2:
                time.sleep(1)
                if Path(f'{tmp}/demo.db').exists(): store = open_store(f'{tmp}/demo.db', readonly=True)
            for name, viewport in (('desktop', {'width': 1280, 'height': 1800}),
                                   ('phone', {'width': 390, 'height': 844})):
                page = browser.new_page(viewport=viewport, device_scale_factor=2 if name == 'phone' else 1)
                open_dashboard(page, url)
                page.wait_for_selector('.fw-gallery img')
                time.sleep(2)
                assert page.evaluate('document.documentElement.scrollWidth') <= viewport['width'], 'overflows'
                page.screenshot(path=str(out / f'dashboard-{name}.png'), full_page=name == 'desktop')
                page.close()
        finally:
            demo.send_signal(signal.SIGINT)  # Ctrl-C: the demo stops its dashboard server too
            demo.wait(30)


NOTEBOOK = """import warnings
warnings.filterwarnings('ignore', category=FutureWarning)  # torch's, about fastai's use of torch.jit
from fastwatch import WatchCallback
from fastwatch.demo.digits import digits_dls, digits_folder, digits_learner
dls = digits_dls(digits_folder({digits!r}), size=28, bs=32)
learn = digits_learner(dls, arch='resnet18', cbs=WatchCallback(store={store!r}, name='digits', show=True))
learn.fine_tune(3, base_lr=1e-2)"""


def notebook_screenshot(browser, out: Path) -> None:
    "The dashboard under the cell that trains, in Jupyter Notebook 7, once the cell has finished."
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / 'notebooks'
        folder.mkdir()
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NOTEBOOK.format(
            digits=f'{tmp}/digits', store=f'{tmp}/notebook.db'))])
        nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
        nbformat.write(nb, folder / 'train.ipynb')
        with jupyter(folder, 'notebook') as (base, token):
            page = browser.new_page(viewport={'width': 1280, 'height': 2400})
            page.goto(f'{base}notebooks/train.ipynb?token={token}')
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=120_000)
            run_all_cells(page)
            page.wait_for_selector('.jp-CodeCell .jp-InputPrompt:text-matches("\\[1\\]")', timeout=600_000)
            page.wait_for_selector('.fw-gallery img')
            time.sleep(3)
            page.locator('.jp-CodeCell').first.screenshot(path=str(out / 'dashboard-notebook.png'))
            page.close()


def compare(browser, folder: Path, checkout: Path) -> None:
    "First render of this version against the one in `checkout`, visits interleaved, on a store of one 1,000-step run."
    store = folder / 'one-run.db'
    record_run(store, 1_000)
    with served(store, folder) as url, served(store, folder, env={'PYTHONPATH': str(checkout)}) as other_url:
        this, other = interleaved(browser, url, other_url)
    print(f'first render, this version: {this}')
    print(f'first render, {checkout}: {other}')
    for clock, name in (('page', "the page's clock"), ('wall', 'wall time')):
        paired = np.array(getattr(this, clock)) - np.array(getattr(other, clock))
        print(f'{name}: paired median {np.median(paired):+.2f} s, this / other '
              f'{np.median(getattr(this, clock)) / np.median(getattr(other, clock)):.2f}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--screenshots', type=Path,
                        help='folder to save dashboard-desktop.png, dashboard-phone.png and dashboard-notebook.png')
    parser.add_argument('--against', type=Path, help='a checkout of another version: first visits compared')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = launch(playwright)
        if args.against:
            compare(browser, Path(tmp), args.against.resolve())
            return
        if args.screenshots:
            notebook_screenshot(browser, args.screenshots)
            screenshots(browser, args.screenshots, free_port())
        alone = Path(tmp) / 'alone' / 'one-run.db'
        alone.parent.mkdir()
        record_run(alone, 1_000)
        with served(alone, alone.parent) as url:  # the link `fastwatch serve` prints: no run named, the store's one
            cold, warm = first_render(browser, url)
            print(f'first render, 1,000 steps, the store\'s only run, the printed link: {cold}; second visit {warm}')
        store = Path(tmp) / 'bench.db'
        small = record_run(store, 1_000)
        started = time.perf_counter()
        large = record_run(store, 1_000_000)
        print(f'recorded a 1,000,000-step run in {time.perf_counter() - started:.0f} s')
        with served(store, Path(tmp)) as url:
            for steps, run_id in (('1,000', small), ('1,000,000', large)):
                visits = first_render(browser, with_query(url, run=run_id))
                for visit, times in zip(('first visit', 'second visit'), visits):
                    print(f'first render, {steps} steps, {visit}: {times}')
            cold, warm = first_render(browser, with_query(url, run=small), pause=0.5)
            print('first render, 1,000 steps, visits back to back (the next preheated kernel starting meanwhile): '
                  f'{Visits(cold.wall + warm.wall, cold.page + warm.page)}')
            http, ws, memory = page_weight(browser, with_query(url, run=large))
            print(f'page weight: {(http + ws) / 1e6:.2f} MB ({http / 1e6:.2f} MB HTTP, {ws / 1e6:.2f} MB WebSocket)')
            print('kernel memory (peak RSS): ' + ', '.join(f'{m:.0f} MB' for m in sorted(memory)))
            latencies = live_latency(browser, url, store)
            print(f'live latency over {len(latencies)} rows: median {np.median(latencies):.2f} s, '
                  f'p95 {np.percentile(latencies, 95):.2f} s, max {max(latencies):.2f} s')
            time.sleep(5)
            print(f'kernels left with every page closed: {len(kernels(url))} (the preheated ones: {PREHEATED_KERNELS})')
        print(f'load average: {" ".join(f"{x:.1f}" for x in os.getloadavg())}')
        browser.close()


if __name__ == '__main__':
    main()
