"""What the view under a training cell shows while the cell runs: the run's header, its loss and metrics as SVG
charts, and the latest epoch's confusion matrix (a table, up to `TABLE_CLASSES` classes), most-confused pairs and top
losses, all in one HTML widget rebuilt from a few small reads each time. No bokeh here: its documents cost the
training's CPU to build and to patch. Once the cell has finished, the interactive dashboard takes this one's place."""
from __future__ import annotations

import ipywidgets as widgets
import numpy as np

from ...store import Store
from ...store.store import ConfusionMatrix
from ..charts import PHASE_COLORS, most_confused
from ..feed import RunFeed
from ..html import escape, style
from ..svg import Line, line_chart
from .epoch_panel import EpochPanel, gallery_html, pairs_html
from .header import Header, header_html

SUMMARY_POINTS = 300  # points per series in the SVG charts
TABLE_CLASSES = 30  # up to this many classes the matrix is a table of counts; above, its most-confused pairs alone
COLORS = {'loss': '#1f77b4', 'valid_loss': '#ff7f0e', 'metric': '#2ca02c'}


def confusion_html(confusion: ConfusionMatrix) -> str:
    "The matrix as a table of counts shaded by each actual class's share (rows actual, columns predicted)."
    if confusion.n_classes > TABLE_CLASSES:
        return f"<p class='fw-muted'>{confusion.n_classes} classes: the most-confused pairs are below.</p>"
    matrix = confusion.matrix
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    head = ''.join(f'<th>{escape(name)}</th>' for name in confusion.vocab)
    rows = ''.join(f'<tr><th>{escape(name)}</th>' + ''.join(
        f"<td style='background: rgba(31, 119, 180, {share:.2f}); color: {'white' if share > 0.55 else '#333'}'>"
        f"{count or ''}</td>" for count, share in zip(matrix[i], shares[i])) + '</tr>'
        for i, name in enumerate(confusion.vocab))
    return (f"<table class='fw-matrix'><caption>Confusion matrix, epoch {confusion.epoch} (rows actual, columns "
            f'predicted)</caption><tr><th></th>{head}</tr>{rows}</table>')


class LiveSummary:
    "One run, as an HTML widget that `refresh` brings up to date."
    css = """
.fw-summary-charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 380px), 1fr));
  gap: 8px; }
.fw-svg { width: 100%; height: auto; } .fw-svg-axis { stroke: #999; fill: none; }
.fw-svg-title { font: 600 12px sans-serif; } .fw-svg-tick { font: 10px sans-serif; fill: #555; }
.fw-matrix { border-collapse: collapse; font-size: 11px; } .fw-matrix caption { text-align: left; font-weight: 600; }
.fw-matrix td { width: 24px; height: 20px; text-align: center; border: 1px solid #eee; }
.fw-matrix th { padding: 0 4px; font-weight: normal; overflow-wrap: anywhere; }
"""

    def __init__(self, store: Store, run_id: str):
        self.store, self.run_id = store, run_id
        self.feed = RunFeed(store, run_id, max_points=SUMMARY_POINTS)
        # Three parts, each sent to the page only when it changes: the epoch's (the heaviest) once an epoch.
        self.header, self.charts, self.epoch = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.widget = widgets.VBox([widgets.HTML(style(Header.css, EpochPanel.css, self.css)), self.header,
                                    self.charts, self.epoch], layout=widgets.Layout(width='100%'))
        self.widget.add_class('fastwatch')
        self._epoch = None  # the latest epoch shown

    def refresh(self) -> None:
        "Read the run as it is now and show what changed."
        snapshot, feed = self.feed.snapshot(), self.feed
        latest = feed.epochs[-1].epoch if feed.epochs else None
        if latest != self._epoch: self._epoch, self.epoch.value = latest, self._epoch_part(latest)
        for part, value in ((self.header, header_html(feed.run, feed.epochs, feed.last)),
                            (self.charts, f"<div class='fw-summary-charts'>{self._charts(snapshot)}</div>")):
            if part.value != value: part.value = value

    def _charts(self, snapshot: dict) -> str:
        series, epochs = snapshot['series'], self.feed.epochs
        shaded = [(span['start'] - 0.5, span['end'] + 0.5, PHASE_COLORS[span['frozen']]) for span in snapshot['spans']]
        loss = line_chart('Loss', [
            Line(series['loss']['x'], series['loss']['y'], 'loss', COLORS['loss'], faint=True),
            Line(series['smooth_loss']['x'], series['smooth_loss']['y'], 'smoothed', COLORS['loss']),
            Line([e.step for e in epochs], [e.valid_loss for e in epochs], 'valid loss', COLORS['valid_loss'],
                 dots=True)], 'step', shaded)
        metrics = [line_chart(name, [Line([e.epoch for e in epochs], [e.metrics.get(name) for e in epochs], name,
                                          COLORS['metric'])], 'epoch') for name in self.feed.metric_names()]
        return loss + ''.join(metrics)

    def _epoch_part(self, epoch: int | None) -> str:
        "The confusion matrix, most-confused pairs and top losses of `epoch`; nothing before the first."
        if epoch is None: return ''
        confusion = self.store.confusion(self.run_id, epoch)
        top = self.store.top_losses(self.run_id, epoch)
        if confusion is None and not top: return ''
        parts = ['<h3>Confusion matrix and top losses</h3>']
        if confusion is not None:
            parts += [confusion_html(confusion), '<b>Most confused</b>',
                      pairs_html(most_confused(confusion.cells, confusion.vocab))]
        parts += ['<b>Top losses</b>', gallery_html(top)]
        return ''.join(parts)
