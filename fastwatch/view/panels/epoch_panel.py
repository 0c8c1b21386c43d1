"""One epoch of the shown run, picked with a slider: its confusion matrix (counts or row-normalised), the
most-confused pairs and the top losses with their thumbnails, like fastai's `ClassificationInterpretation`."""
from __future__ import annotations

import base64

import ipywidgets as widgets

from ...store import Store
from ...store.store import ConfusionMatrix
from ...store.tables import EpochRow, TopLossRow
from ..charts import ConfusionChart, most_confused
from ..html import escape, value_text
from ..reads import StoreReads
from .chart_grid import ChartWidget
from .run_list import GRID, control_layout

IMAGE_TYPES = ('image/png', 'image/jpeg', 'image/webp', 'image/gif')


def gallery_html(items: list[TopLossRow]) -> str:
    "The top losses as thumbnails (or text) with actual / predicted / loss / probability, like `plot_top_losses`."
    if not items: return "<p class='fw-muted'>No top losses recorded for this epoch.</p>"
    cards = []
    for item in items:
        if item.image:
            kind = item.image_type if item.image_type in IMAGE_TYPES else 'image/png'
            body = (f"<img src='data:{kind};base64,{base64.b64encode(item.image).decode()}' "
                    f"alt='{escape(item.item)}' title='{escape(item.item)}'>")
        else:
            body = f"<pre title='{escape(item.item)}'>{escape(item.text or item.item)}</pre>"
        cards.append(f"<figure class='fw-item'>{body}<figcaption><b>{escape(item.actual)}</b> / "
                     f"{escape(item.predicted)}<br>loss {value_text(item.loss, '.3f')} · "
                     f"p {value_text(item.probability, '.2f')}</figcaption></figure>")
    return ("<div class='fw-muted'>actual / predicted, loss, probability of the prediction</div>"
            f"<div class='fw-gallery'>{''.join(cards)}</div>")


def pairs_html(pairs: list[tuple[str, str, int]]) -> str:
    "The most-confused pairs as a table."
    if not pairs: return "<p class='fw-muted'>No confusions in this epoch.</p>"
    rows = ''.join(f'<tr><td>{escape(a)}</td><td>{escape(p)}</td><td>{n}</td></tr>' for a, p, n in pairs)
    return f"<table class='fw-table'><tr><th>actual</th><th>predicted</th><th>count</th></tr>{rows}</table>"


class EpochPanel:
    "The confusion matrix, most-confused pairs and top losses of the epoch the slider is on."
    css = """
.fw-gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.fw-item { margin: 0; width: 110px; font-size: 11px; line-height: 1.35; overflow-wrap: anywhere; }
.fw-item img { width: 100px; height: 100px; object-fit: contain; image-rendering: pixelated; background: #eee; }
.fw-item pre { white-space: pre-wrap; max-height: 8em; overflow: hidden; margin: 0; }
"""

    def __init__(self, store: Store, reads: StoreReads):
        self.store, self.reads = store, reads
        self.run_id: str | None = None
        self.epoch = widgets.IntSlider(description='Epoch', continuous_update=False, layout=control_layout(),
                                       style={'description_width': '60px'})
        self.normalised = widgets.ToggleButtons(options=[('counts', False), ('row-normalised', True)])
        self.confusion: ConfusionChart | None = None
        self.confusion_box = widgets.Box(layout=widgets.Layout(width='100%'))
        self.pairs, self.gallery, self.note = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.widget = widgets.VBox([
            widgets.HTML('<h3>Confusion matrix and top losses</h3>'), self.epoch, self.note,
            widgets.Box([widgets.VBox([self.normalised, self.confusion_box], layout=widgets.Layout(width='100%')),
                         widgets.VBox([widgets.HTML('<b>Most confused</b>'), self.pairs])], layout=GRID),
            widgets.HTML('<b>Top losses</b>'), self.gallery])
        self._asked = 0  # which request the shown epoch answers: a late answer to an older one is dropped
        self.epoch.observe(lambda _: self.show_epoch(), 'value')
        self.normalised.observe(lambda _: self.show_epoch(), 'value')

    def show_run(self, run_id: str, epochs: list[EpochRow]) -> None:
        "Show a run's latest epoch."
        self.run_id = run_id
        self.epochs_changed(epochs, follow_latest=True)

    def epochs_changed(self, epochs: list[EpochRow], follow_latest: bool = False) -> None:
        "Let the slider reach the newest epoch, and move it there if it was on the latest one (or `follow_latest`)."
        self.widget.layout.display = None if epochs else 'none'
        if not epochs: return
        before, low, high = self.epoch.value, epochs[0].epoch, epochs[-1].epoch
        at_latest = before == self.epoch.max
        with self.epoch.hold_trait_notifications():
            self.epoch.max = max(high, self.epoch.min)
            self.epoch.min, self.epoch.max = low, high
            if follow_latest or at_latest: self.epoch.value = high
        if self.epoch.value == before: self.show_epoch()  # otherwise the slider's observer did

    def show_epoch(self) -> None:
        "Read the slider's epoch and show it."
        run_id, epoch = self.run_id, self.epoch.value
        self._asked += 1
        asked = self._asked
        self.reads.then(lambda: (self.store.confusion(run_id, epoch), self.store.top_losses(run_id, epoch)),
                        lambda found: asked == self._asked and self._render(epoch, *found))

    def _render(self, epoch: int, confusion: ConfusionMatrix | None, top: list[TopLossRow]) -> None:
        if confusion is None:
            self.note.value = f"<p class='fw-muted'>No confusion matrix recorded for epoch {epoch}.</p>"
            self.pairs.value = ''
        else:
            self.note.value = ''
            vocab = [str(v) for v in confusion.vocab]
            if self.confusion is None or self.confusion.names != vocab:
                for model in self.confusion_box.children: model.close()
                self.confusion, self.confusion_box.children = ConfusionChart(vocab), []
            # Drawn before a new chart's widget exists: its first snapshot then carries the colours and the hover,
            # which changes sent before the browser has the view would lose.
            self.confusion.show(confusion.cells, self.normalised.value)
            if not self.confusion_box.children:
                self.confusion_box.children = [ChartWidget(self.confusion.fig, layout=widgets.Layout(width='100%'))]
            self.pairs.value = pairs_html(most_confused(confusion.cells, vocab))
        self.gallery.value = gallery_html(top)
