"""The dashboard's bokeh charts. Each chart owns its figure and data sources: `load` replaces a run's data,
`extend` streams new points (`ColumnDataSource.stream`, so the browser redraws without a page render).

Plain data in, bokeh models out: no widgets and no store here, so tests can check what a chart holds.
Names from the store (runs, classes) reach the browser only as canvas text (legends, axis labels): never as HTML.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from bokeh.document import Document
from bokeh.events import DocumentReady
from bokeh.models import (
    ColumnDataSource,
    CustomJSHover,
    FactorRange,
    HoverTool,
    LinearColorMapper,
    Range1d,
    TapTool,
)
from bokeh.palettes import Blues256, Category20_20, RdYlGn11
from bokeh.plotting import figure

from ..store.confusion import binned
from ..store.dynamics import DataMap

# Overlaid runs: 20 colours, the strong ones first (Category20 pairs each with a lighter one), then dash patterns.
RUN_COLORS = Category20_20[::2] + Category20_20[1::2]
RUN_DASHES = ('solid', 'dashed', 'dotted', 'dotdash', 'dashdot')


def run_style(index: int) -> tuple[str, str]:
    "The colour and dash pattern of the `index`-th run drawn on a chart (0: the shown run)."
    return RUN_COLORS[index % len(RUN_COLORS)], RUN_DASHES[index // len(RUN_COLORS) % len(RUN_DASHES)]
PHASE_COLORS = {True: '#9ecae1', False: '#fdd0a2'}  # frozen body / unfrozen, as in fine_tune's two fits


def _figure(title: str, x_label: str, y_label: str, **kwargs) -> figure:
    fig = figure(title=title, height=250, sizing_mode='stretch_width', tools='pan,box_zoom,wheel_zoom,reset,save',
                 toolbar_location='above', x_axis_label=x_label, y_axis_label=y_label, **kwargs)
    fig.toolbar.logo = None
    return fig


def _hover(renderer, tooltips: list[tuple[str, str]]) -> HoverTool:
    """Hover for one renderer, always on and without a toolbar button: the button (a menu of a chart's hover tools)
    is slow to build and lengthens the dashboard's first render."""
    return HoverTool(renderers=[renderer], tooltips=tooltips, visible=False)


def resend_on_ready(fig: figure) -> None:
    """Send the chart's data again when the browser has drawn it: jupyter_bokeh renders the snapshot taken when
    its widget was made, and changes sent before the browser view existed are lost."""
    if fig.document is None: Document().add_root(fig)

    def resend(_event) -> None:
        for model in fig.document.models:
            if isinstance(model, ColumnDataSource): model.data = dict(model.data)
            elif isinstance(model, FactorRange): model.factors = list(model.factors)
    fig.document.on_event(DocumentReady, resend)


@dataclass(frozen=True)
class Layer:
    "One series drawn for each run: its key in the data, legend label, how it is drawn, and the hover format."
    key: str
    label: str
    kind: str = 'line'  # line, faint (raw values), points (line and markers), bars
    fmt: str = '{0.0000}'


class SeriesChart:
    "A chart of one or more layers for each of several runs (the first run is the one shown; others overlay it)."

    def __init__(self, title: str, x_label: str, y_label: str, layers: list[Layer], runs: list[tuple[str, str]],
                 y_axis_type: str = 'linear'):
        self.fig = _figure(title, x_label, y_label, y_axis_type=y_axis_type)
        self.sources: dict[tuple[str, str], ColumnDataSource] = {}
        overlay = len(runs) > 1
        for index, (run_id, run_label) in enumerate(runs):
            color, dash = run_style(index)
            for layer in layers:
                source = ColumnDataSource({'x': [], 'y': []}, name=f'{layer.key}:{run_id}')
                self.sources[run_id, layer.key] = source
                # Overlaid, a run's layers share one legend entry (bokeh groups renderers of one label): its name.
                renderer = self._draw(layer, source, color, run_label if overlay else layer.label, dash)
                tooltips = [(layer.label, f'@y{layer.fmt}'), (x_label, '@x')]
                self.fig.add_tools(_hover(renderer, [('run', run_label), *tooltips] if overlay else tooltips))
        if x_label == 'epoch': self.fig.xaxis.ticker.min_interval = 1
        if self.fig.legend:
            self.fig.legend.visible = overlay or len(layers) > 1
            self.fig.legend.location = 'top_right'
            self.fig.legend.click_policy = 'hide'
            self.fig.legend.label_text_font_size = '8pt'
        resend_on_ready(self.fig)

    def _draw(self, layer: Layer, source, color: str, legend: str, dash: str):
        fig = self.fig
        if layer.kind == 'faint':
            return fig.line('x', 'y', source=source, color=color, alpha=0.25, legend_label=legend)
        if layer.kind == 'bars':
            return fig.vbar('x', top='y', width=0.8, source=source, color=color, alpha=0.6, legend_label=legend)
        line = fig.line('x', 'y', source=source, color=color, line_width=2, line_dash=dash, legend_label=legend)
        if layer.kind != 'points': return line
        return fig.scatter('x', 'y', source=source, color=color, size=7, marker='diamond', legend_label=legend)

    def load(self, run_id: str, data: dict[str, dict]) -> None:
        "Replace a run's data: `{layer key: {'x': [...], 'y': [...]}}`."
        for key, columns in data.items():
            # Own copies: series share their step lists, and streaming extends a source's lists in place.
            if (run_id, key) in self.sources:
                self.sources[run_id, key].data = {k: list(v) for k, v in columns.items()}

    def extend(self, run_id: str, data: dict[str, dict]) -> None:
        "Append new points to a run's layers."
        for key, columns in data.items():
            if (run_id, key) in self.sources and len(columns['x']):
                self.sources[run_id, key].stream({k: list(v) for k, v in columns.items()})

    def points(self, run_id: str, key: str) -> int:
        "How many points a run's layer holds."
        return len(self.sources[run_id, key].data['x'])


class LossChart(SeriesChart):
    "Loss per batch (raw, faint; smoothed) with valid loss per epoch, over fine_tune's frozen and unfrozen fits."

    def __init__(self, runs: list[tuple[str, str]], x_label: str = 'step'):
        super().__init__('Loss', x_label, 'loss', [Layer('loss', 'loss', 'faint'), Layer('smooth_loss', 'smoothed'),
                                                  Layer('valid_loss', 'valid loss', 'points')], runs)
        self.phases = ColumnDataSource({'x0': [], 'x1': [], 'color': [], 'phase': []})
        strips = self.fig.vstrip('x0', 'x1', source=self.phases, fill_color='color', fill_alpha=0.25, line_color=None,
                                 level='underlay')
        self.fig.add_tools(_hover(strips, [('phase', '@phase')]))

    def shade(self, spans: list[dict], pad: float = 0.5) -> None:
        "Shade each fit from its start to its end (`feed.fit_spans`), `pad` more either side: frozen body or unfrozen."
        data = {'x0': [s['start'] - pad for s in spans], 'x1': [s['end'] + pad for s in spans],
                'color': [PHASE_COLORS[s['frozen']] for s in spans],
                'phase': [f"fit {s['fit'] + 1}: {'frozen body' if s['frozen'] else 'unfrozen'}" for s in spans]}
        if data != self.phases.data: self.phases.data = data


DENSE_CLASSES = 30  # up to this many classes, a cell per pair with its count written in it; above, one image
IMAGE_SIDE = 400  # the image's most rows and columns: above, each bins several classes (page weight, memory)
CLASS_JS = """const i = Math.max(0, Math.min(names.length - 1, Math.floor(value)));
if (size == 1) return names[i];
const a = i - i % size, b = Math.min(names.length, a + size) - 1;
return names[a] + ' … ' + names[b] + ' (' + (b - a + 1) + ' classes)';"""


class ConfusionChart:
    """The confusion matrix as a heatmap (rows actual, columns predicted): counts, or shares of each actual class.
    Up to DENSE_CLASSES classes a rect and its count per cell; above, one `image` glyph without text (one array,
    at most IMAGE_SIDE² bins of classes), whose hover names the classes under the pointer."""

    def __init__(self, vocab: list[str], on_pick=None):
        "`on_pick(actual, predicted)`: class indices of a cell tapped (drawn a rect a cell, up to DENSE_CLASSES)."
        names = [str(v) for v in vocab]
        self.names, self.dense = names, len(names) <= DENSE_CLASSES
        size = min(560, 200 + 36 * len(names))
        common = dict(title='Confusion matrix', height=size, sizing_mode='stretch_width', max_width=size + 100,
                      toolbar_location=None, x_axis_label='predicted', y_axis_label='actual')
        mapper = LinearColorMapper(palette=Blues256[::-1], low=0, high=1)
        if self.dense:
            self._cells(names, mapper, common)
            if on_pick is not None:
                self.fig.add_tools(TapTool())
                index = {name: i for i, name in enumerate(names)}
                self.source.selected.on_change('indices', lambda _attr, _old, new: new and on_pick(
                    index[self.source.data['actual'][new[0]]], index[self.source.data['predicted'][new[0]]]))
        else: self._image(names, mapper, common)
        self.fig.grid.grid_line_color = None
        resend_on_ready(self.fig)

    def _cells(self, names: list[str], mapper, common: dict) -> None:
        self.fig = figure(x_range=FactorRange(*names), y_range=FactorRange(*names[::-1]), tools='hover,save',
                          tooltips=[('actual', '@actual'), ('predicted', '@predicted'), ('count', '@count'),
                                    ('share of actual', '@share{0.0%}')], **common)
        self.fig.xaxis.major_label_orientation = 0.8 if max(map(len, names), default=0) > 3 else 0
        self.source = ColumnDataSource({k: [] for k in ('actual', 'predicted', 'count', 'share', 'value', 'text',
                                                        'ink')})
        self.fig.rect('predicted', 'actual', 0.95, 0.95, source=self.source, line_color=None,
                      fill_color={'field': 'value', 'transform': mapper})
        self.fig.text('predicted', 'actual', text='text', source=self.source, text_align='center',
                      text_baseline='middle', text_font_size='8pt', text_color='ink')

    def _image(self, names: list[str], mapper, common: dict) -> None:
        n = len(names)
        # Coordinates are class indices, actual class 0 at the top.
        self.fig = figure(x_range=Range1d(0, n, bounds=(0, n)), y_range=Range1d(n, 0, bounds=(0, n)),
                          tools='pan,wheel_zoom,box_zoom,reset,save', **common)
        self.fig.toolbar.logo = None
        self.size = max(1, -(-n // IMAGE_SIDE))
        self.mapper, self.source = mapper, ColumnDataSource({'image': []})
        renderer = self.fig.image('image', x=0, y=0, dw=n, dh=n, source=self.source, color_mapper=mapper,
                                  origin='top_left')
        name = CustomJSHover(args={'names': names, 'size': self.size}, code=CLASS_JS)
        self.hover = HoverTool(renderers=[renderer], visible=False, formatters={'$x': name, '$y': name})
        self.fig.add_tools(self.hover)

    def show(self, cells: np.ndarray, normalised: bool = False) -> None:
        "Draw a matrix from its (actual, predicted, count) cells; `normalised` colours each by its share of the row."
        n = len(self.names)
        matrix, _ = binned(np.asarray(cells).reshape(-1, 3), n, n if self.dense else IMAGE_SIDE)
        rows = matrix.sum(axis=1, keepdims=True)
        share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
        if not self.dense:  # one array: what the colour shows is what the hover reads
            self.mapper.high = 1 if normalised else max(1, int(matrix.max()))
            self.hover.tooltips = [('actual', '$y{custom}'), ('predicted', '$x{custom}'),
                                   ('share of actual', '@image{0.0%}') if normalised else ('count', '@image{0,0}')]
            self.source.data = {'image': [(share if normalised else matrix).astype(np.float32)]}
            return
        value = share if normalised else matrix / max(1, matrix.max())
        actual, predicted = np.indices(matrix.shape)
        text = [f'{s:.0%}' if normalised else str(c) for c, s in zip(matrix.ravel(), share.ravel())]
        self.source.data = {
            'actual': [self.names[i] for i in actual.ravel()], 'predicted': [self.names[j] for j in predicted.ravel()],
            'count': matrix.ravel().tolist(), 'share': share.ravel().tolist(), 'value': value.ravel().tolist(),
            'text': [t if c else '' for t, c in zip(text, matrix.ravel())],
            'ink': ['white' if v > 0.55 else '#333' for v in value.ravel()]}


def most_confused(cells: np.ndarray, vocab: list[str], n: int = 10) -> list[tuple[str, str, int]]:
    "The `n` most frequent (actual, predicted, count) mistakes of a matrix's cells, like fastai's `most_confused`."
    cells = np.asarray(cells).reshape(-1, 3)
    mistakes = cells[cells[:, 0] != cells[:, 1]]
    mistakes = mistakes[np.lexsort((mistakes[:, 1], mistakes[:, 0]))]  # ties in row-major order, as fastai's
    order = np.argsort(-mistakes[:, 2], kind='stable')[:n]
    return [(vocab[a], vocab[p], int(c)) for a, p, c in mistakes[order]]


MAP_POINTS = 20_000  # items drawn one glyph each on the data map; above, binned into one image
MAP_BINS = 100


class DataMapChart:
    """The data map of "Dataset Cartography": each item's confidence in its label against its variability across
    epochs, coloured by how often it was predicted right. Hover names the item; a tap picks it (`picked`, a dataset
    index). Above `MAP_POINTS` items, one image of item counts per bin instead of a glyph an item."""

    def __init__(self, on_pick):
        self.fig = _figure('Data map', 'variability (std of p(label) across epochs)', 'confidence (mean p(label))',
                           x_range=Range1d(0, 0.5, bounds=(0, 0.5)), y_range=Range1d(0, 1, bounds=(0, 1)))
        self.fig.height = 320
        self.fig.add_tools(TapTool())
        mapper = LinearColorMapper(palette=RdYlGn11[::-1], low=0, high=1)
        self.points = ColumnDataSource({k: [] for k in ('x', 'y', 'correct', 'name', 'label', 'index')})
        dots = self.fig.scatter('x', 'y', source=self.points, size=5, alpha=0.7, line_color=None,
                                fill_color={'field': 'correct', 'transform': mapper})
        self.fig.add_tools(_hover(dots, [('item', '@name'), ('label', '@label'), ('confidence', '@y{0.00}'),
                                         ('variability', '@x{0.00}'), ('right', '@correct{0%}')]))
        self.bins = ColumnDataSource({'image': []})
        self.count_mapper = LinearColorMapper(palette=Blues256[::-1], low=0, high=1)
        self.fig.image('image', x=0, y=0, dw=0.5, dh=1, source=self.bins, color_mapper=self.count_mapper)
        self.points.selected.on_change('indices', lambda _attr, _old, new: new and on_pick(
            int(self.points.data['index'][new[0]])))
        resend_on_ready(self.fig)

    def show(self, found: DataMap, labels: list[str]) -> None:
        "Draw a split's data map (`labels`: each item's label as shown)."
        seen = np.flatnonzero(~np.isnan(found.confidence))
        x, y = np.nan_to_num(found.variability[seen]), found.confidence[seen]
        if len(seen) > MAP_POINTS:
            counts, _, _ = np.histogram2d(y, x, bins=MAP_BINS, range=[[0, 1], [0, 0.5]])
            self.count_mapper.high = max(1, int(counts.max()))
            self.points.data = {k: [] for k in self.points.data}
            self.bins.data = {'image': [counts.astype(np.float32)]}
            return
        self.bins.data = {'image': []}
        self.points.data = {'x': x.tolist(), 'y': y.tolist(), 'correct': found.correctness[seen].tolist(),
                            'name': [found.name(i) for i in seen], 'label': [labels[i] for i in seen],
                            'index': seen.tolist()}
