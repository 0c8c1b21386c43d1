"""The dashboard: the widgets of `apps/dashboard.ipynb`, built from a store, and kept live by an asyncio task.

`dashboard(query)` is the whole app for a page's query string (`?run=ID&store=WHERE`): the `Dashboard`, or a message
that says what is wrong and what there is. The notebook only calls `load_bokehjs()` and `dashboard(page_query())`.
Nothing here imports torch or fastai: a viewer's kernel stays small.
"""
from __future__ import annotations

import asyncio
import base64
import html
import math
import os
import time
from collections.abc import Mapping

import ipywidgets as widgets
from bokeh.resources import Resources
from IPython.display import HTML, display
from jupyter_bokeh import BokehModel

from ..errors import StoreError
from ..formats import format_duration, format_number, format_when
from ..share.links import NOTEBOOK, binder_url_from_env, dashboard_query, find_notebook, local_url, published_binder_url
from ..store import Store
from .charts import ConfusionChart, Layer, LossChart, SeriesChart, most_confused
from .live import MAX_POINTS, RunFeed, follow
from .page import QueryError, open_view_store, parse_query, served_root, store_files

STATES = ('live', 'finished', 'failed', 'interrupted', 'stale')
IMAGE_TYPES = ('image/png', 'image/jpeg', 'image/webp', 'image/gif')
STYLE = """<style>
.fastwatch { width: 100%; max-width: 1400px; margin: 0 auto; box-sizing: border-box; font-size: 14px; }
.fastwatch * { box-sizing: border-box; }
.fw-header { display: flex; flex-wrap: wrap; gap: 4px 14px; align-items: baseline; }
.fw-name { font-size: 20px; font-weight: 600; overflow-wrap: anywhere; }
.fw-state { padding: 1px 9px; border-radius: 9px; color: white; font-weight: 600; }
.fw-live { background: #2ca02c; } .fw-finished { background: #1f77b4; }
.fw-failed { background: #d62728; } .fw-interrupted { background: #ff7f0e; } .fw-stale { background: #7f7f7f; }
.fw-alerts { margin: 4px 0; padding-left: 18px; font-size: 13px; } .fw-alerts li { overflow-wrap: anywhere; }
.fw-muted { color: #666; } .fw-error { color: #b00; overflow-wrap: anywhere; }
.fw-gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.fw-item { margin: 0; width: 110px; font-size: 11px; line-height: 1.35; overflow-wrap: anywhere; }
.fw-item img { width: 100px; height: 100px; object-fit: contain; image-rendering: pixelated; background: #eee; }
.fw-item pre { white-space: pre-wrap; max-height: 8em; overflow: hidden; margin: 0; }
.fw-table td, .fw-table th { padding: 2px 10px 2px 0; text-align: left; overflow-wrap: anywhere; }
.fw-share { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
.fw-share input { flex: 1 1 240px; min-width: 0; font-family: monospace; font-size: 12px; padding: 3px; }
.fw-message { max-width: 720px; padding: 12px; font-size: 15px; }
</style>"""
GRID = widgets.Layout(display='grid', grid_template_columns='repeat(auto-fill, minmax(min(100%, 440px), 1fr))',
                      grid_gap='10px', width='100%')


class ChartWidget(BokehModel):
    "A bokeh chart as a widget. jupyter_bokeh's `close` fails when called again (as garbage collection does)."

    def close(self) -> None:
        if self.comm is not None: super().close()


def _control_layout() -> widgets.Layout:
    "A control's layout: its grid cell's width, at most 560 px; min_width 0 so long run names never widen the page."
    return widgets.Layout(width='auto', min_width='0', max_width='560px')


def load_bokehjs() -> None:
    """Put this installation's BokehJS in the page (inline: no CDN, no internet), once, before any chart; unless the
    page loads it itself (`fastwatch serve` says so in FASTWATCH_BOKEHJS)."""
    if os.environ.get('FASTWATCH_BOKEHJS') == 'page': return
    display(HTML(f"<script type='text/javascript'>{Resources(mode='inline', components=['bokeh']).js_raw[0]}</script>"))


def _e(value) -> str: return html.escape(str(value), quote=True)


def _value(value: float | None, spec: str) -> str:
    "A top loss's loss or probability: the store keeps one that was not finite as None, shown as nan."
    if value is None: value = math.nan
    return format(value, spec) if math.isfinite(value) else format_number(value)


def run_label(run: dict) -> str:
    "How a run is named in the run picker."
    return f"{run['name'] or 'run'} · {run['state']} · {format_when(run['created_at'])[:16]} · {run['id'][:8]}"


def header_html(run: dict, epochs: list[dict], last: dict | None, now: float | None = None) -> str:
    "The run's name and id, state, elapsed time, epoch x of n, current phase and time of the last update."
    now, info, state = now or time.time(), run['info'] or {}, run['state']
    planned = info.get('planned_epochs') or (epochs[-1]['epoch'] + 1 if epochs else None)
    current = last['epoch'] + 1 if last and state == 'live' else len(epochs)
    fits = info.get('fits') or []
    if last and state == 'live':
        phase = f"{'frozen body' if last['frozen'] else 'unfrozen'}" + (
            f" (fit {last['fit'] + 1} of {len(fits)})" if len(fits) > 1 else '')
    else:
        phase = '—'
    updated = max([run['updated_at'], *([last['time']] if last else [])])
    elapsed = (now if state == 'live' else run['updated_at']) - run['created_at']
    parts = [f"<span class='fw-name'>{_e(run['name'] or 'run')}</span>", f"<code>{_e(run['id'])}</code>",
             f"<span class='fw-state fw-{state if state in STATES else 'interrupted'}'>{_e(state)}</span>",
             f'<span>elapsed {format_duration(elapsed)}</span>',
             f"<span>epoch {current} of {_e(planned) if planned else '?'}</span>", f'<span>phase {_e(phase)}</span>',
             f"<span class='fw-muted'>last update {format_when(updated)[11:]}</span>"]
    if run.get('published_age') is not None:  # a followed published run: how far behind the trainer it is
        parts.append(f"<span class='fw-muted fw-age'>published data {format_duration(run['published_age'])} old</span>")
    if run.get('error'): parts.append(f"<span class='fw-error'>{_e(run['error'])}</span>")
    return f"<div class='fw-header'>{''.join(parts)}</div>"


def gallery_html(items: list[dict]) -> str:
    "The top losses as thumbnails (or text) with actual / predicted / loss / probability, like `plot_top_losses`."
    if not items: return "<p class='fw-muted'>No top losses recorded for this epoch.</p>"
    cards = []
    for item in items:
        if item.get('image'):
            kind = item.get('image_type') if item.get('image_type') in IMAGE_TYPES else 'image/png'
            body = (f"<img src='data:{kind};base64,{base64.b64encode(item['image']).decode()}' "
                    f"alt='{_e(item['item'])}' title='{_e(item['item'])}'>")
        else:
            body = f"<pre title='{_e(item['item'])}'>{_e(item.get('text') or item['item'])}</pre>"
        cards.append(f"<figure class='fw-item'>{body}<figcaption><b>{_e(item['actual'])}</b> / "
                     f"{_e(item['predicted'])}<br>loss {_value(item['loss'], '.3f')} · "
                     f"p {_value(item['probability'], '.2f')}"
                     f"</figcaption></figure>")
    return ("<div class='fw-muted'>actual / predicted, loss, probability of the prediction</div>"
            f"<div class='fw-gallery'>{''.join(cards)}</div>")


def alerts_html(alerts: list[dict]) -> str:
    "The alerts sent about the run (`Store.alerts`), newest first; nothing when there are none."
    if not alerts: return ''
    items = ''.join(f"<li><span class='fw-muted'>{format_when(a['time'])[11:]}</span> "
                    f"{_e(a['message'].splitlines()[0])}"
                    + ('' if a['delivered'] else " <span class='fw-error'>(not delivered)</span>") + '</li>'
                    for a in reversed(alerts))
    return f"<div class='fw-alert-list'><b>Alerts</b><ul class='fw-alerts'>{items}</ul></div>"


def pairs_html(pairs: list[tuple[str, str, int]]) -> str:
    "The most-confused pairs as a table."
    if not pairs: return "<p class='fw-muted'>No confusions in this epoch.</p>"
    rows = ''.join(f'<tr><td>{_e(a)}</td><td>{_e(p)}</td><td>{n}</td></tr>' for a, p, n in pairs)
    return f"<table class='fw-table'><tr><th>actual</th><th>predicted</th><th>count</th></tr>{rows}</table>"


def share_html(url: str, note: str = '') -> str:
    "The Share control: the URL of the current view, and a button that copies it."
    copy = ("const i=this.previousElementSibling;i.select();"
            "(navigator.clipboard?navigator.clipboard.writeText(i.value):Promise.reject())"
            ".catch(()=>document.execCommand('copy'));this.textContent='Copied'")
    return (f"<div class='fw-share'><b>Share</b><input class='fw-share-url' readonly value='{_e(url)}' "
            f"onclick='this.select()'><button class='fw-copy' onclick=\"{_e(copy)}\">Copy</button></div>"
            + (f"<div class='fw-muted'>{_e(note)}</div>" if note else ''))


def message_html(message: str, runs: list[dict] | None = None, store: str | None = None,
                 stores: list[str] | None = None) -> str:
    "A page that says what is wrong and lists what there is to open instead."
    parts = [f"<div class='fw-message'><p class='fw-error'>{_e(message)}</p>"]
    if runs:
        links = ''.join(f"<li><a href='?{_e(dashboard_query(r['id'], store))}'>{_e(run_label(r))}</a></li>"
                        for r in runs)
        parts.append(f'<p>Runs in this store:</p><ul>{links}</ul>')
    if stores:
        links = ''.join(f"<li><a href='?{_e(dashboard_query(None, s))}'>{_e(s)}</a></li>" for s in stores)
        parts.append(f'<p>Stores in the served folder:</p><ul>{links}</ul>')
    parts.append("<p class='fw-muted'>The dashboard takes <code>?run=ID</code> and <code>?store=PATH</code> "
                 '(a store file in the served folder, or an https URL of one).</p></div>')
    return ''.join(parts)


def chart_data(series: dict[str, dict], epochs: list[dict], metric_names: list[str]) -> dict[str, dict]:
    "Each chart's layers (`{chart: {layer: {'x', 'y'}}}`) from batch series and epoch rows."
    def per_epoch(x: str, value) -> dict:
        return {'x': [e[x] for e in epochs], 'y': [value(e) for e in epochs]}
    return {'loss': {'loss': series['loss'], 'smooth_loss': series['smooth_loss'],
                     'valid_loss': per_epoch('step', lambda e: e['valid_loss'])},
            'lr': {'lr': series['lr']},
            **{f'metric:{name}': {'value': per_epoch('epoch', lambda e, name=name: e['metrics'].get(name))}
               for name in metric_names},
            'duration': {'duration': per_epoch('epoch', lambda e: e['duration'])}}


def batch_series(batches: dict[str, list]) -> dict[str, dict]:
    "New batch rows (`Store.batches` columns) as the series `chart_data` takes."
    return {name: {'x': batches['step'], 'y': batches[name]} for name in ('loss', 'smooth_loss', 'lr')}


class Dashboard:
    "The dashboard of one store: header, run picker and overlay, charts, confusion matrix, top losses, Share."

    def __init__(self, store: Store, run_id: str | None = None, store_param: str | None = None,
                 environ: Mapping[str, str] = os.environ):
        self.store, self.store_param, self.environ = store, store_param, environ
        self.feeds: dict[str, RunFeed] = {}
        self.charts: dict[str, SeriesChart] = {}
        self.metric_names: list[str] = []
        self.confusion: ConfusionChart | None = None
        self.task: asyncio.Task | None = None
        self.following = False  # set by `start`: the app follows what it shows; tests call `refresh` instead
        self.run_id: str | None = None
        label = {'description_width': '60px'}
        self.picker = widgets.Dropdown(description='Run', layout=_control_layout(), style=label)
        self.overlay = widgets.SelectMultiple(description='Overlay', rows=3, layout=_control_layout(), style=label)
        self.header, self.note, self.share = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.alerts = widgets.HTML()
        self.chart_box = widgets.Box(layout=GRID)
        self.epoch = widgets.IntSlider(description='Epoch', continuous_update=False, layout=_control_layout(),
                                       style=label)
        self.normalised = widgets.ToggleButtons(options=[('counts', False), ('row-normalised', True)])
        self.confusion_box = widgets.Box(layout=widgets.Layout(width='100%'))
        self.pairs, self.gallery, self.epoch_note = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.epoch_views = widgets.VBox([
            widgets.HTML('<h3>Confusion matrix and top losses</h3>'), self.epoch, self.epoch_note,
            widgets.Box([widgets.VBox([self.normalised, self.confusion_box], layout=widgets.Layout(width='100%')),
                         widgets.VBox([widgets.HTML('<b>Most confused</b>'), self.pairs])], layout=GRID),
            widgets.HTML('<b>Top losses</b>'), self.gallery])
        self.widget = widgets.VBox([widgets.HTML(STYLE), self.header, self.note, self.alerts,
                                    widgets.Box([self.picker, self.overlay], layout=GRID), self.chart_box,
                                    self.epoch_views, self.share], layout=widgets.Layout(width='100%'))
        self.widget.add_class('fastwatch')
        self._fill_picker(run_id)
        self.picker.observe(self._picked, 'value')
        self.overlay.observe(lambda _: self.show(self.picker.value, self.overlay.value), 'value')
        self.epoch.observe(lambda _: self.show_epoch(), 'value')
        self.normalised.observe(lambda _: self.show_epoch(), 'value')
        if self.picker.value: self.show(self.picker.value)
        else: self.header.value = message_html(f'No runs yet in {self.store.location}: waiting for the first one '
                                               '(train with cbs=WatchCallback()).')

    def _fill_picker(self, run_id: str | None = None) -> None:
        runs = self.store.runs()
        if run_id is not None and run_id not in [r['id'] for r in runs]: self.store.run(run_id)  # RunNotFound
        self.picker.options = [(run_label(r), r['id']) for r in runs]
        self.picker.value = run_id or (runs[0]['id'] if runs else None)
        self.overlay.options = [(run_label(r), r['id']) for r in runs]

    def _picked(self, change) -> None:
        if self.overlay.value: self.overlay.value = ()  # a newly picked run starts alone; the overlay shows it
        elif change['new']: self.show(change['new'])

    # --- what is shown ----------------------------------------------------------------------------------
    def show(self, run_id: str, overlay: tuple[str, ...] = ()) -> None:
        "Show a run, with others overlaid on its charts."
        self.run_id = run_id
        ids = [run_id, *[i for i in overlay if i != run_id]]
        self.feeds = {i: RunFeed(self.store, i) for i in ids}
        main = self.feeds[run_id]
        snapshots = {i: feed.snapshot() for i, feed in self.feeds.items()}
        self.metric_names = main.run['info'].get('metric_names') or sorted(
            {name for e in main.epochs for name in e['metrics']})
        labels = [(i, self.feeds[i].run['name'] or i[:8]) for i in ids]
        for model in self.chart_box.children: model.close()
        self.charts = {'loss': LossChart(labels),
                       **{f'metric:{n}': SeriesChart(n, 'epoch', n, [Layer('value', n, 'points')], labels)
                          for n in self.metric_names},
                       'lr': SeriesChart('Learning rate', 'step', 'lr', [Layer('lr', 'lr', fmt='{0.00e+0}')], labels),
                       'duration': SeriesChart('Epoch duration', 'epoch', 'seconds',
                                               [Layer('duration', 'seconds', 'bars', '{0.0}')], labels)}
        for i, snapshot in snapshots.items(): self._load(i, snapshot)
        self.chart_box.children = [ChartWidget(chart.fig, layout=widgets.Layout(width='100%', min_width='0'))
                                   for chart in self.charts.values()]
        self._epochs_changed(follow_latest=True)
        self.header.value = header_html(main.run, main.epochs, main.last)
        self.alerts.value = alerts_html(self.store.alerts(run_id))
        self.share.value = share_html(*self.share_url())
        if self.following: self.start()

    def _load(self, run_id: str, snapshot: dict) -> None:
        for key, layers in chart_data(snapshot['series'], snapshot['epochs'], self.metric_names).items():
            self.charts[key].load(run_id, layers)
        if run_id == self.run_id: self.charts['loss'].shade(snapshot['spans'])

    def _epochs_changed(self, follow_latest: bool) -> None:
        "Let the epoch slider reach the newest epoch, and move it there if it was on the latest one."
        epochs = self.feeds[self.run_id].epochs
        self.epoch_views.layout.display = None if epochs else 'none'
        if not epochs: return
        before, low, high = self.epoch.value, epochs[0]['epoch'], epochs[-1]['epoch']
        at_latest = before == self.epoch.max
        with self.epoch.hold_trait_notifications():
            self.epoch.max = max(high, self.epoch.min)
            self.epoch.min, self.epoch.max = low, high
            if follow_latest or at_latest: self.epoch.value = high
        if self.epoch.value == before: self.show_epoch()  # otherwise the slider's observer did

    def show_epoch(self) -> None:
        "The confusion matrix, most-confused pairs and top losses of the epoch the slider is on."
        epoch = self.epoch.value
        confusion = self.store.confusion(self.run_id, epoch)
        if confusion is None:
            self.epoch_note.value = f"<p class='fw-muted'>No confusion matrix recorded for epoch {epoch}.</p>"
            self.pairs.value = ''
        else:
            self.epoch_note.value = ''
            vocab = [str(v) for v in confusion['vocab']]
            if self.confusion is None or self.confusion.names != vocab:
                for model in self.confusion_box.children: model.close()
                self.confusion, self.confusion_box.children = ConfusionChart(vocab), []
            # Drawn before a new chart's widget exists: its first snapshot then carries the colours and the hover,
            # which changes sent before the browser has the view would lose.
            self.confusion.show(confusion['cells'], self.normalised.value)
            if not self.confusion_box.children:
                self.confusion_box.children = [ChartWidget(self.confusion.fig, layout=widgets.Layout(width='100%'))]
            self.pairs.value = pairs_html(most_confused(confusion['cells'], vocab))
        self.gallery.value = gallery_html(self.store.top_losses(self.run_id, epoch))

    def share_url(self) -> tuple[str, str]:
        "The URL of the current view (the Binder link on Binder), and a note for the person sharing it."
        notebook = find_notebook(served_root()) or NOTEBOOK
        binder = binder_url_from_env(self.environ, notebook, run=self.run_id, store=self.store_param)
        if binder: return binder, 'Opens this run on Binder.'
        published = getattr(self.store, 'published_url', None)
        if published:
            return (published_binder_url(published, self.run_id),
                    'Follows this published run live on Binder: anyone with the link can read the run.')
        env = self.environ
        host = env.get('SERVER_NAME') or '127.0.0.1'
        port = f":{env['SERVER_PORT']}" if env.get('SERVER_PORT') else ''
        url = local_url(f"http://{host}{port}{env.get('SCRIPT_NAME') or '/'}", self.run_id, self.store_param)
        note = 'The server asks for its token: send it separately.' if 'token=' in env.get('QUERY_STRING', '') else ''
        if host in ('127.0.0.1', 'localhost', '::1'):
            note = 'This server listens on this machine only: serve with --host 0.0.0.0 to share on your network.'
        return url, note

    # --- live -------------------------------------------------------------------------------------------
    def refresh(self) -> bool:
        "Read what is new in the shown runs and stream it into the charts; True if anything was."
        if self.run_id is None:  # waiting for the first run
            self._fill_picker()
            return False
        new = False
        for run_id, feed in self.feeds.items():
            update = feed.poll()
            if update is None: continue
            new = True
            if update.get('reload') or self.charts['loss'].points(run_id, 'loss') > 2 * MAX_POINTS:
                self._load(run_id, feed.snapshot())  # downsample again rather than grow without bound
            else:
                for key, layers in chart_data(batch_series(update['batches']), update['epochs'],
                                              self.metric_names).items():
                    self.charts[key].extend(run_id, layers)
                if run_id == self.run_id: self.charts['loss'].shade(update['spans'])
            if run_id == self.run_id:
                self.header.value = header_html(feed.run, feed.epochs, feed.last)
                self.alerts.value = alerts_html(self.store.alerts(run_id))
                if update.get('reload') or update['epochs']: self._epochs_changed(follow_latest=False)
        return new

    def _step(self) -> bool:
        new = self.refresh()
        return new or self.run_id is None or any(f.run['state'] in ('live', 'stale') for f in self.feeds.values())

    def _stopped(self, reason: str) -> None:
        self.task = None
        if reason == 'lifetime':
            self.note.value = ("<p class='fw-muted'>Live updates paused after a long time open: "
                               'reload the page to resume.</p>')
        elif reason.startswith('error'):
            self.note.value = f"<p class='fw-error'>Live updates stopped ({_e(reason)}): reload the page.</p>"

    def start(self) -> None:
        "Follow the shown runs from an asyncio task in the kernel (no-op while one is already running)."
        try: loop = asyncio.get_running_loop()
        except RuntimeError: return  # not in a kernel (a script, a test): `refresh()` updates the view
        self.following = True
        if self.task is None or self.task.done():
            self.task = loop.create_task(follow(self._step, on_stop=self._stopped))


def dashboard(query: str | None = None, environ: Mapping[str, str] = os.environ) -> widgets.Widget:
    "The app for a page's query string: the live dashboard, or a message that says what is wrong and what there is."
    params, store = {}, None
    try:
        params = parse_query(query)
        store = open_view_store(params.get('store'))
        app = Dashboard(store, params.get('run'), params.get('store'), environ)
    except Exception as e:  # the page says what went wrong, never with a traceback
        known = isinstance(e, (QueryError, StoreError))
        message = str(e) if known else f"the dashboard failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        try: runs = store.runs() if store is not None else None
        except StoreError: runs = None
        text = message_html(message, runs, params.get('store'), None if runs else store_files())
        return widgets.HTML(STYLE + text)
    app.start()
    return app.widget
