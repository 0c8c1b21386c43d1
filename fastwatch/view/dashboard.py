"""The dashboard: the Voila app of `apps/dashboard.ipynb`, made of panels (`panels/`) that render from feeds
(`feed.py`), kept current by a follow policy (`follow.py`) whose store reads run away from the kernel's event loop
(`reads.py`).

`dashboard(query)` is the whole app for a page's query string (`?run=ID&store=WHERE`): the `Dashboard`, or a message
that says what is wrong and what there is. The notebook only calls `load_bokehjs()` and `page_dashboard()`, which
waits for the page's query.
Nothing here imports torch or fastai: a viewer's kernel stays small.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import ipywidgets as widgets
from bokeh.resources import Resources
from IPython.display import HTML, display

from ..errors import FastwatchError
from ..store import Store
from .drawn import Drawn
from .feed import MAX_POINTS, RunFeed, RunsFeed
from .follow import FollowPolicy, Poll, follow
from .html import escape, message_html, style
from .page import OWNER_ENV, open_view_store, page_query, parse_query, preheated, store_files
from .panels.chart_grid import CHARTS, COMPACT_CHARTS, ChartGrid
from .panels.data_panel import DataPanel, OwnerDecisions
from .panels.epoch_panel import EpochPanel
from .panels.full_page import FullPage
from .panels.header import AlertList, Header, StatusLine
from .panels.run_list import RunList
from .panels.runs_table import RunsTable
from .panels.share import SharePanel
from .reads import StoreReads


def load_bokehjs() -> None:
    """Put this installation's BokehJS in the page (inline: no CDN, no internet), once, before any chart; unless the
    page loads it itself (`fastwatch serve` says so in FASTWATCH_BOKEHJS)."""
    if os.environ.get('FASTWATCH_BOKEHJS') == 'page': return
    display(HTML(f"<script type='text/javascript'>{Resources(mode='inline', components=['bokeh']).js_raw[0]}</script>"))


# The panels of each layout, top to bottom: the page of `fastwatch serve` and Binder, and the compact view under a
# notebook cell (`inline.py`: loss and metrics, then the latest epoch, and a way to the full page). Those after the
# `STORE_PANELS` show the shown run: `?view=runs` hides them until a run is opened from the runs table.
PAGE = ('header', 'status', 'runs_table', 'alerts', 'run_list', 'chart_grid', 'epoch_panel', 'data_panel', 'share')
NOTEBOOK = ('header', 'status', 'alerts', 'chart_grid', 'epoch_panel', 'full_page')
STORE_PANELS = ('header', 'status', 'runs_table')


class Dashboard:
    """The dashboard of one store: the shown run's header and alerts, the run list, the charts of the shown run and
    the runs overlaid on it, its epochs' confusion matrices and top losses, its items (data map, suspects,
    decisions: `owner` may decide), and the Share control; `compact`: the notebook's layout (`NOTEBOOK`), one run's
    loss and metrics and latest epoch, with a way to the full page. `view='runs'`: the runs table alone, until a run
    is opened from it (a page that names no run of a store of several opens so too)."""

    def __init__(self, store: Store, run_id: str | None = None, store_param: str | None = None,
                 environ: Mapping[str, str] = os.environ, compact: bool = False, owner: bool = False,
                 view: str | None = None):
        self.store = store
        self.status = StatusLine()
        self.reads = StoreReads(on_error=self.status.error)
        self.header, self.alerts = Header(), AlertList()
        self.run_list = RunList(on_show=self.show, on_axis=self.set_axis)
        self.runs_table = RunsTable(on_open=self.show, on_overlay=lambda overlay: self.show(self.run_id, overlay),
                                    overlaid=lambda: self._wanted[1:])
        self.drawn = Drawn()  # the page's first drawing, which following the store and reading its items wait for
        self.chart_grid = ChartGrid(COMPACT_CHARTS if compact else CHARTS, on_drawn=self.drawn.set)
        self.epoch_panel = EpochPanel(store, self.reads)
        self.data_panel = DataPanel(store, self.reads, self.drawn, OwnerDecisions() if owner else None)
        self.share = SharePanel(environ, store_param, getattr(store, 'published_url', None))
        self.full_page = FullPage(store)
        self.layout = NOTEBOOK if compact else PAGE
        panels = [getattr(self, name) for name in self.layout]
        self.run_view = widgets.VBox([getattr(self, name).widget for name in self.layout
                                      if name not in STORE_PANELS])
        self.widget = widgets.VBox([widgets.HTML(style(*(panel.css for panel in panels))),
                                    *(getattr(self, name).widget for name in self.layout if name in STORE_PANELS),
                                    self.run_view], layout=widgets.Layout(width='100%'))
        self.widget.add_class('fastwatch')
        self.run_id: str | None = None
        self._wanted: tuple[str, ...] = ()  # the runs of the latest `show`
        self.feeds: dict[str, RunFeed] = {}  # the shown run's first, then the runs overlaid on it
        self.task: asyncio.Task | None = None
        self.runs = self.reads.now(lambda: RunsFeed(store, summarised='runs_table' in self.layout))
        if run_id is not None and run_id not in [run.id for run in self.runs.runs]:
            self.reads.now(lambda: store.run(run_id))  # RunNotFound names the runs there are
        self.policy = FollowPolicy(self.runs)
        self.run_list.render(self.runs.runs, run_id)
        if 'runs_table' in self.layout: self.runs_table.render(self.runs.summaries, run_id)
        if view == 'runs' or (run_id is None and len(self.runs.runs) > 1 and 'runs_table' in self.layout):
            self._runs_only()
            return
        with self.reads.at_once():  # the page's first render has the whole view, as a page without a kernel would
            if self.run_list.picker.value: self.show(self.run_list.picker.value)
            else: self._waiting()

    @property
    def overlay(self) -> tuple[str, ...]:
        "The runs drawn over the shown run."
        return tuple(self.feeds)[1:]

    def _runs_only(self) -> None:
        "Show the runs table alone, until a run is opened from it."
        self.run_view.layout.display = 'none'
        count = len(self.runs.runs)
        self.header.widget.value = (f"<div class='fw-header'><span class='fw-name'>{count} run{'s' * (count != 1)}"
                                    f"</span><span class='fw-muted'>{escape(self.store.location)}: open one, or tick "
                                    'several to compare them</span></div>')

    def _waiting(self) -> None:
        self.header.widget.value = message_html(f'No runs yet in {self.store.location}: waiting for the first one '
                                                '(train with cbs=WatchCallback()).')

    # --- what is shown ----------------------------------------------------------------------------------
    def show(self, run_id: str, overlay: tuple[str, ...] = ()) -> None:
        "Show a run, with others overlaid on its charts; a later call supersedes one whose read has not started."
        ids = [run_id, *[i for i in overlay if i != run_id]]
        self._wanted = wanted = tuple(ids)

        def read() -> tuple[dict[str, RunFeed], dict[str, dict]] | None:
            if self._wanted != wanted: return None
            feeds = {i: RunFeed(self.store, i) for i in ids}
            return feeds, {i: feed.snapshot() for i, feed in feeds.items()}
        self.reads.then(read, lambda found: found and self._wanted == wanted and self._show(run_id, *found))

    def set_axis(self, axis: str) -> None:
        "Draw the charts over steps over another x axis: step, epoch or time (`timeline.X_AXES`)."
        self.chart_grid.axis = axis
        if self.run_id is not None: self.show(self.run_id, self.overlay)

    def _show(self, run_id: str, feeds: dict[str, RunFeed], snapshots: dict[str, dict]) -> None:
        self.run_id, self.feeds = run_id, feeds
        self.run_list.render(self.runs.runs, run_id)
        if 'runs_table' in self.layout: self.runs_table.render(self.runs.summaries, run_id)
        self.run_view.layout.display = None
        main = feeds[run_id]
        self.chart_grid.show([(i, feed.run.name or i[:8]) for i, feed in feeds.items()], snapshots,
                             main.metric_names())
        self.epoch_panel.show_run(run_id, main.epochs)
        if 'data_panel' in self.layout: self.data_panel.show_run(run_id)
        self.header.render(main.run, main.epochs, main.last)
        self.alerts.render(main.alerts)
        self.share.render(run_id)
        self.full_page.render(run_id)
        self.drawn.then(self.start)

    def apply(self, poll: Poll) -> None:
        "Show what a tick read: the run list's changes, and what came of each shown run."
        if poll.runs_changed:
            self.run_list.render(self.runs.runs)
            if self.run_id is None and self.runs.runs: self.show(self.runs.runs[0].id)
        if poll.summaries_changed and 'runs_table' in self.layout: self.runs_table.render(self.runs.summaries)
        for run_id, update in poll.updates.items():
            feed, shown = self.feeds[run_id], run_id == self.run_id
            if update.reload or self.chart_grid.points(run_id) > 2 * MAX_POINTS:  # downsample again, never grow
                self.reads.then(feed.snapshot, lambda snapshot, run_id=run_id, shown=shown:
                                self.chart_grid.load(run_id, snapshot, shaded=shown))
            else:
                self.chart_grid.extend(run_id, update, feed.spans() if shown else None)
            if not shown: continue
            self.header.render(feed.run, feed.epochs, feed.last)
            if update.alerts: self.alerts.render(feed.alerts)
            if update.reload or update.epochs:
                self.epoch_panel.epochs_changed(feed.epochs)
                if 'data_panel' in self.layout: self.data_panel.refresh()

    # --- live -------------------------------------------------------------------------------------------
    def refresh(self) -> bool:
        "Read what is due now and show it, at once (outside a kernel's loop); True if anything was new."
        poll = self.reads.now(lambda: self.policy.read(self.feeds))
        self.apply(poll)
        return poll.runs_changed or bool(poll.updates)

    def catch_up(self) -> None:
        "Read and show everything new now, the run list included: for a dashboard built before its page asked."
        self.policy.list_runs_next()
        self.refresh()

    async def _tick(self) -> bool:
        "One tick of the follow loop: read what is due off the loop, then show it. A failing store is a message."
        feeds = self.feeds
        try: poll = await self.reads.read(lambda: self.policy.read(feeds))
        except Exception as e:
            self.status.error(str(e) if isinstance(e, FastwatchError) else f'{type(e).__name__}: {e}')
            return True
        self.status.error(None)
        if feeds is self.feeds: self.apply(poll)  # else another run was picked meanwhile
        return True

    def _stopped(self, reason: str) -> None:
        self.task = None
        if reason.startswith('error'): self.status.error(f'stopped ({reason}): reload the page')

    def page_sent(self) -> None:
        """The page is on its way: what waits for its first drawing goes on once it has drawn, or after
        `DRAWN_WAIT_SECONDS` if it never says so (at once if it shows no chart)."""
        if self.chart_grid.charts: self.drawn.expect()
        else: self.drawn.set()
        self.drawn.then(self.start)

    def start(self) -> None:
        "Follow the store from an asyncio task in the kernel, while the page is open (no-op outside a kernel)."
        try: loop = asyncio.get_running_loop()
        except RuntimeError: return  # not in a kernel (a script, a test): `refresh()` updates the view
        if self.task is None or self.task.done():
            self.task = loop.create_task(follow(self._tick, interval=lambda: self.policy.interval(self.feeds),
                                                on_stop=self._stopped))


def dashboard(query: str | None = None, environ: Mapping[str, str] = os.environ) -> widgets.Widget:
    "The app for a page's query string: the live dashboard, or a message that says what is wrong and what there is."
    params, store = {}, None
    try:
        params = parse_query(query)
        store = open_view_store(params.get('store'))
        # The owner's page: the store that `fastwatch serve` serves, not a snapshot, a download or a followed run.
        owner = 'store' not in params and environ.get(OWNER_ENV) == '1'
        app = Dashboard(store, params.get('run'), params.get('store'), environ, owner=owner, view=params.get('view'))
    except Exception as e:  # the page says what went wrong, never with a traceback
        known = isinstance(e, FastwatchError)
        message = str(e) if known else f"the dashboard failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        try: runs = store.runs() if store is not None else None
        except FastwatchError: runs = None
        text = message_html(message, runs, params.get('store'), None if runs else store_files())
        return widgets.HTML(style() + text)
    app.page_sent()
    return app.widget


def page_dashboard(environ: Mapping[str, str] = os.environ) -> widgets.Widget:
    """The app of the page this kernel serves (the notebook's call). A preheated kernel (`fastwatch serve`) builds the
    dashboard of the served store's newest run while it waits for its page; a page that asks for a run of that store
    gets it brought up to date (another run shown in it), without waiting for what was built. Any other page gets
    `dashboard(query)`."""
    likely = _likely_dashboard(environ) if preheated(environ) else None
    query = page_query()
    if likely is not None and _shows(likely, query):
        likely.page_sent()
        return likely.widget
    if likely is not None:
        widgets.Widget.close_all()  # the guess's are the only widgets of a kernel that waited for its page
        likely.reads.close()
        likely.store.close()
    return dashboard(query, environ)


def _likely_dashboard(environ: Mapping[str, str]) -> Dashboard | None:
    "The dashboard of the served store's newest run, as a page that names no other store would get it; None if none."
    try:
        store = open_view_store(None)
        newest = store.runs()[:1]
        if not newest: return None
        return Dashboard(store, newest[0].id, None, environ, owner=environ.get(OWNER_ENV) == '1')
    except FastwatchError: return None  # the page's own `dashboard(query)` says what is wrong


def _shows(likely: Dashboard, query: str) -> bool:
    """Make `likely`, read up to now, the page of `query` if it can be: a run of its store named, or none of a store
    that has one run. False for any other page."""
    try: params = parse_query(query)
    except FastwatchError: return False
    if set(params) - {'run'}: return False
    likely.catch_up()
    runs = [run.id for run in likely.runs.runs]
    wanted = params.get('run', runs[0] if len(runs) == 1 else None)
    if wanted not in runs: return False
    if wanted != likely.run_id:
        with likely.reads.at_once(): likely.show(wanted)
    return True
