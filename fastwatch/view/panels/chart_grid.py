"""The charts of the shown runs, in a grid: one entry of `CHARTS` a chart (a metric's entry makes one chart for
each metric the run logged), each saying how to draw itself and which series of a run's batches and epochs it shows.
Overlaid runs are drawn on the same charts. Charts over steps are drawn over the x axis chosen (`timeline.X_AXES`);
charts of a point an epoch stay over epochs."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as widgets
from bokeh.events import DocumentReady
from jupyter_bokeh import BokehModel

from ...store.tables import EpochRow
from ..charts import Layer, LossChart, SeriesChart
from ..feed import RunUpdate, system_series
from ..timeline import X_AXES, Timeline
from .run_list import grid_layout

Series = dict[str, dict]  # {name: {'x': [...], 'y': [...]}}
Labels = list[tuple[str, str]]  # (run id, label) of each run drawn: the shown run first


class ChartWidget(BokehModel):
    "A bokeh chart as a widget. jupyter_bokeh's `close` fails when called again (as garbage collection does)."

    def close(self) -> None:
        if self.comm is not None: super().close()


def per_epoch(epochs: list[EpochRow], x: str, value: Callable[[EpochRow], object]) -> dict:
    "A layer of one point an epoch: x from the epoch's column `x`, y from `value(epoch)`."
    return {'x': [getattr(e, x) for e in epochs], 'y': [value(e) for e in epochs]}


@dataclass(frozen=True)
class ChartSpec:
    """One chart: `make(labels, x_label)` draws it for the runs shown, `data(series, epochs)` gives its layers
    (`{layer: {'x', 'y'}}`) from a run's batch series and epochs (all of them, or those new since). `over_steps`:
    its x values are steps, placed on the x axis chosen; else epochs, as they are."""
    key: str
    make: Callable[[Labels, str], SeriesChart]
    data: Callable[[Series, list[EpochRow]], dict[str, dict]]
    over_steps: bool = True


def metric_chart(name: str) -> ChartSpec:
    "The chart of one metric the run logged, a point an epoch."
    return ChartSpec(f'metric:{name}',
                     lambda labels, _: SeriesChart(name, 'epoch', name, [Layer('value', name, 'points')], labels),
                     lambda series, epochs: {'value': per_epoch(epochs, 'epoch', lambda e: e.metrics.get(name))},
                     over_steps=False)


LOSS = ChartSpec('loss', LossChart, lambda series, epochs: {
    'loss': series['loss'], 'smooth_loss': series['smooth_loss'],
    'valid_loss': per_epoch(epochs, 'step', lambda e: e.valid_loss)})
LEARNING_RATE = ChartSpec(
    'lr', lambda labels, x: SeriesChart('Learning rate', x, 'lr', [Layer('lr', 'lr', fmt='{0.00e+0}')], labels),
    lambda series, epochs: {'lr': series['lr']})
DURATION = ChartSpec(
    'duration',
    lambda labels, _: SeriesChart('Epoch duration', 'epoch', 'seconds',
                                  [Layer('duration', 'seconds', 'bars', '{0.0}')], labels),
    lambda series, epochs: {'duration': per_epoch(epochs, 'epoch', lambda e: e.duration)}, over_steps=False)
MEMORY = ChartSpec(
    'memory', lambda labels, x: SeriesChart('Memory', x, 'MB', [
        Layer('rss_mb', 'process', 'points', '{0,0}'), Layer('cuda_allocated_mb', 'CUDA allocated', 'line', '{0,0}'),
        Layer('cuda_reserved_mb', 'CUDA reserved', 'line', '{0,0}')], labels),
    lambda series, epochs: {k: series[k] for k in ('rss_mb', 'cuda_allocated_mb', 'cuda_reserved_mb')})
CPU = ChartSpec(
    'cpu', lambda labels, x: SeriesChart('CPU and GPU use', x, '%', [
        Layer('cpu_percent', 'process CPU (100% = a core)', 'points', '{0}'),
        Layer('gpu_percent', 'GPU', 'line', '{0}')], labels),
    lambda series, epochs: {k: series[k] for k in ('cpu_percent', 'gpu_percent')})
METRICS = 'metrics'  # where the metrics' charts go
CHARTS = (LOSS, METRICS, LEARNING_RATE, DURATION, MEMORY, CPU)
COMPACT_CHARTS = (LOSS, METRICS)  # under a notebook cell


def charts_for(metric_names: list[str], charts: tuple = CHARTS) -> list[ChartSpec]:
    "The charts of a run that logged `metric_names`, in the order of `charts` (`CHARTS`, `COMPACT_CHARTS`)."
    return [spec for entry in charts
            for spec in ([metric_chart(name) for name in metric_names] if entry == METRICS else [entry])]


NO_BATCHES = {'step': [], 'loss': [], 'smooth_loss': [], 'lr': []}


def batch_series(batches: dict[str, list]) -> Series:
    "Batch rows (`Store.batches` columns) as the series the charts take."
    return {name: {'x': batches['step'], 'y': batches[name]} for name in ('loss', 'smooth_loss', 'lr')}


class ChartGrid:
    """The charts of the shown run and the runs overlaid on it: those of `charts` (`CHARTS`, `COMPACT_CHARTS`), over
    the x axis `axis` (a key of `X_AXES`). `on_drawn()` when the browser has drawn the first of them."""
    css = ''

    def __init__(self, charts: tuple = CHARTS, on_drawn: Callable[[], None] = lambda: None):
        self.widget = widgets.Box(layout=grid_layout())
        self.chosen, self.on_drawn = charts, on_drawn
        self.axis = 'step'
        self.specs: list[ChartSpec] = []
        self.charts: dict[str, SeriesChart] = {}

    def show(self, labels: Labels, snapshots: dict[str, dict], metric_names: list[str]) -> None:
        "Draw new charts for the runs of `labels`, from each run's `RunFeed.snapshot()`."
        for model in self.widget.children: model.close()
        self.specs = charts_for(metric_names, self.chosen)
        self.charts = {spec.key: spec.make(labels, X_AXES[self.axis]) for spec in self.specs}
        if self.charts: next(iter(self.charts.values())).fig.document.on_event(DocumentReady, lambda _: self.on_drawn())
        for run_id, snapshot in snapshots.items(): self.load(run_id, snapshot, shaded=run_id == labels[0][0])
        self.widget.children = [ChartWidget(chart.fig, layout=widgets.Layout(width='100%', min_width='0'))
                                for chart in self.charts.values()]

    def load(self, run_id: str, snapshot: dict, shaded: bool) -> None:
        "Replace a run's data by a snapshot; `shaded`: the shown run, whose fits shade the loss chart."
        timeline = snapshot['timeline']
        for spec in self.specs:
            self.charts[spec.key].load(run_id, self._placed(spec, spec.data(snapshot['series'], snapshot['epochs']),
                                                            timeline))
        if shaded: self._shade(snapshot['spans'], timeline)

    def extend(self, run_id: str, update: RunUpdate, spans: list[dict] | None) -> None:
        "Add what a poll read of a run; `spans`: the shown run's fits, to shade."
        series = {**batch_series(update.batches or NO_BATCHES), **system_series(update.system)}
        for spec in self.specs:
            self.charts[spec.key].extend(run_id, self._placed(spec, spec.data(series, update.epochs), update.timeline))
        if spans is not None: self._shade(spans, update.timeline)

    def _placed(self, spec: ChartSpec, layers: dict[str, dict], timeline: Timeline) -> dict[str, dict]:
        "A chart's layers with their steps placed on the x axis chosen."
        if not spec.over_steps or self.axis == 'step': return layers
        return {key: {**columns, 'x': timeline.place(columns['x'], self.axis)} for key, columns in layers.items()}

    def _shade(self, spans: list[dict], timeline: Timeline) -> None:
        "Shade the loss chart's fits, their first and last steps placed on the x axis chosen."
        starts, ends = (timeline.place([s[end] for s in spans], self.axis) for end in ('start', 'end'))
        self.charts[LOSS.key].shade([{**s, 'start': a, 'end': b} for s, a, b in zip(spans, starts, ends)],
                                    pad=0.5 if self.axis == 'step' else 0)  # half a step either side

    def points(self, run_id: str, key: str = 'loss') -> int:
        "How many points a run's layer of the loss chart holds (`key`)."
        return self.charts[LOSS.key].points(run_id, key)
