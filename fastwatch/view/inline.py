"""The dashboard in a notebook: `show` puts a compact view of a run under the cell that calls it, or under the cell
that trains (`WatchCallback(show=True)`), and keeps it current.

While that cell runs, the kernel's event loop is busy with it, and every bit of CPU is the training's: a thread of
the view's own reads what is new each second and redraws a light summary (SVG charts and HTML tables,
`panels/live_summary.py`), and the training thread does none of it. Once the kernel is free, the interactive
compact dashboard (bokeh charts, the epoch slider, the way to the full page) takes the summary's place and the
dashboard's own follow loop keeps it current. In a script there is no notebook: `show` prints how to watch.
"""
from __future__ import annotations

import asyncio
import threading

import ipywidgets as widgets
from IPython.display import display

from ..errors import FastwatchError
from ..store import Store, display_location, open_store, store_url
from .dashboard import Dashboard
from .html import escape
from .notebooks import in_notebook, notebook_host
from .panels.live_summary import LiveSummary

POLL_SECONDS = 2.0  # how often the summary reads the store while the cell trains


def how_to_watch(location: str, run_id: str | None) -> str:
    "The line that says how to watch a run outside a notebook."
    where = display_location(location)
    return f'fastwatch: watch it: fastwatch serve --store {where}' + (f' --run {run_id}' if run_id else '')


_bokehjs_loaded = False


def _load_bokehjs() -> None:
    "BokehJS into the notebook's page, from this installation (no CDN), once per kernel."
    global _bokehjs_loaded
    if _bokehjs_loaded: return
    from bokeh.io import output_notebook
    from bokeh.resources import INLINE
    if notebook_host() == 'colab':  # Colab shows widgets of other packages only with its custom widget manager
        from google.colab import output
        output.enable_custom_widget_manager()
    output_notebook(INLINE, hide_banner=True)
    _bokehjs_loaded = True


class NotebookView:
    """A compact view of one run under a notebook cell: a summary redrawn by a thread of its own while the kernel is
    busy, then the interactive dashboard once the kernel is free. It says it waits until the run's store has it."""

    def __init__(self, location: str, run_id: str | None = None, height: str | None = None):
        self.location, self.run_id = location, run_id
        self.note = widgets.HTML(f"<p class='fw-muted'>fastwatch: waiting for run {escape(run_id or '')} in "
                                 f'{escape(display_location(location))}…</p>')
        self.widget = widgets.VBox([self.note], layout=widgets.Layout(width='100%', height=height,
                                                                     overflow='auto' if height else None))
        self.store: Store | None = None
        self.summary: LiveSummary | None = None
        self.dashboard: Dashboard | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the kernel's
        self._kernel_free, self._wake = threading.Event(), threading.Event()
        self._asked: list[threading.Event] = []  # `catch_up`s waiting for the thread's next read
        self._thread = threading.Thread(target=self._follow_while_busy, name='fastwatch-notebook', daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Follow the run: from a thread now, and from the kernel's `loop` once it is free (a callback scheduled on
        it runs only after the cell that holds it has finished)."""
        self._loop = loop
        self._thread.start()
        if loop is not None: loop.call_soon_threadsafe(self._take_over)
        else: self._kernel_free.set()

    def catch_up(self, timeout: float = 5.0) -> bool:
        """Show what the store holds now and wait for it, at most `timeout` s: what the cell that trains asks at the
        fit's end, so that the cell's output ends with the run's end."""
        done = threading.Event()
        self._asked.append(done)
        self._wake.set()
        return done.wait(timeout) if self._thread.is_alive() else False

    def _follow_while_busy(self) -> None:
        while not self._kernel_free.is_set():
            asked, self._asked = self._asked, []
            try:
                if self.summary is None: self._open()
                if self.summary is not None: self.summary.refresh()
            except FastwatchError as e:
                self.note.value = f"<p class='fw-error'>fastwatch: {escape(str(e))}</p>"
            for done in asked: done.set()
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _open(self) -> None:
        "The summary, once the store exists and holds the run (the recording writes its first rows in a moment)."
        try: store = open_store(self.location, readonly=True)
        except FastwatchError: return  # not there yet
        runs = [run.id for run in store.runs()]
        if not runs or (self.run_id is not None and self.run_id not in runs): return
        self.store, self.run_id = store, self.run_id or runs[0]
        self.summary = LiveSummary(store, self.run_id)
        self.widget.children = [self.summary.widget]

    def _take_over(self) -> None:
        """On the kernel's loop, once the cell has finished: the interactive dashboard takes the summary's place and
        follows the run from here (or, for a run not in the store yet, once it is)."""
        self._kernel_free.set()
        self._wake.set()
        self._thread.join(timeout=POLL_SECONDS * 10)
        if self.store is None: self._open()
        if self.store is None:
            self._loop.call_later(POLL_SECONDS, self._take_over)
            return
        try: self.dashboard = Dashboard(self.store, self.run_id, compact=True)
        except FastwatchError as e:
            self.note.value = f"<p class='fw-error'>fastwatch: {escape(str(e))}</p>"
            self.widget.children = [self.note]
            return
        self.widget.children = [self.dashboard.widget]
        self.dashboard.start()


def show(run: str | None = None, store: str | None = None, height: str | None = None) -> NotebookView | None:
    """Show a run (default: the newest) of a store (default: `$FASTWATCH_STORE`, then `./fastwatch.db`) under the
    current notebook cell, live while it trains. `height`: a CSS height (`'600px'`) to scroll the view within.
    Outside a notebook, print how to watch it instead (and return None)."""
    location = store_url(store)
    if not in_notebook():
        print(how_to_watch(location, run))
        return None
    if notebook_host() == 'kaggle':
        print(how_to_watch(location, run) + " (Kaggle's notebooks cannot draw the dashboard: publish the run with "
              'WatchCallback(publish=…) and follow it on Binder)')
        return None
    _load_bokehjs()
    view = NotebookView(location, run, height)
    display(view.widget)
    try: loop = asyncio.get_running_loop()
    except RuntimeError: loop = None
    view.start(loop)
    return view
