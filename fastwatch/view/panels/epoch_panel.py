"""One epoch of the shown run, picked with a slider: its confusion matrix (counts or row-normalised), the
most-confused pairs and the top losses with their thumbnails, like fastai's `ClassificationInterpretation`."""
from __future__ import annotations

import base64
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np

from ...store import Store
from ...store.decisions import current, decision_text
from ...store.dynamics import ItemValues, item_names, item_thumbnails, name_of
from ...store.store import ConfusionMatrix
from ...store.tables import DecisionRow, EpochRow, TopLossRow
from ..charts import ConfusionChart, most_confused
from ..html import class_label, escape, value_text
from ..reads import StoreReads
from .chart_grid import ChartWidget
from .run_list import control_layout, grid_layout

IMAGE_TYPES = ('image/png', 'image/jpeg', 'image/webp', 'image/gif')
PAIR_ITEMS = 48  # items of a confusion matrix's cell shown at once


def thumbnail_html(row, name: str) -> str:
    """An item's thumbnail, else its short text form, else its name; titled with its name. `row`: a row with
    `image`, `image_type` and `text` columns (a top loss, an item's image), or None."""
    image, text = getattr(row, 'image', None), getattr(row, 'text', None)
    if image:
        kind = row.image_type if row.image_type in IMAGE_TYPES else 'image/png'
        return (f"<img src='data:{kind};base64,{base64.b64encode(image).decode()}' alt='{escape(name)}' "
                f"title='{escape(name)}'>")
    return f"<pre title='{escape(name)}'>{escape(text or name)}</pre>"


def decision_html(decision: DecisionRow | None) -> str:
    "The mark of an item the owner decided about, wherever it is shown."
    text = decision_text(decision)
    return f"<br><span class='fw-decided'>{escape(text)}</span>" if text else ''


def gallery_html(items: list[TopLossRow], decided: dict | None = None) -> str:
    """The top losses as thumbnails (or text) with actual / predicted / loss / probability, like `plot_top_losses`;
    `decided`: the run's decisions by (split, item), marked on the items they are about."""
    if not items: return "<p class='fw-muted'>No top losses recorded for this epoch.</p>"
    decided = decided or {}
    cards = [f"<figure class='fw-item'>{thumbnail_html(item, item.item)}"
             f"<figcaption><b>{escape(item.actual)}</b> / {escape(item.predicted)}<br>loss "
             f"{value_text(item.loss, '.3f')} · p {value_text(item.probability, '.2f')}"
             f"{decision_html(decided.get(('valid', item.item)))}</figcaption></figure>" for item in items]
    return ("<div class='fw-muted'>actual / predicted, loss, probability of the prediction</div>"
            f"<div class='fw-gallery'>{''.join(cards)}</div>")


@dataclass
class PairItems:
    "The validation items of one cell of an epoch's confusion matrix, highest loss first."
    actual: str
    predicted: str
    names: list[str]
    losses: list[float]
    label_probs: list[float]
    images: list  # a row with `image`, `image_type`, `text` for each item, or None
    decided: dict


def pair_items_html(pair: PairItems | None) -> str:
    if pair is None: return "<p class='fw-muted'>No per-item values recorded for this epoch's validation items.</p>"
    cards = [f"<figure class='fw-item'>{thumbnail_html(image, n)}"
             f"<figcaption>{escape(n)}<br>loss {value_text(loss, '.3f')} · p(label) {value_text(p, '.2f')}"
             f"{decision_html(pair.decided.get(('valid', n)))}</figcaption></figure>"
             for n, loss, p, image in zip(pair.names[:PAIR_ITEMS], pair.losses, pair.label_probs, pair.images)]
    more = f' (the {PAIR_ITEMS} of highest loss shown)' if len(pair.names) > PAIR_ITEMS else ''
    return (f"<div class='fw-muted'>{len(pair.names)} items of actual <b>{escape(pair.actual)}</b> predicted "
            f"<b>{escape(pair.predicted)}</b>{more}</div><div class='fw-gallery'>{''.join(cards)}</div>")


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
.fw-decided { color: #8a4b00; font-weight: bold; }
"""

    def __init__(self, store: Store, reads: StoreReads):
        self.store, self.reads = store, reads
        self.run_id: str | None = None
        self.epoch = widgets.IntSlider(max=0, description='Epoch', continuous_update=False, layout=control_layout(),
                                       style={'description_width': '60px'})
        self.normalised = widgets.ToggleButtons(options=[('counts', False), ('row-normalised', True)])
        self.confusion: ConfusionChart | None = None
        self.confusion_box = widgets.Box(layout=widgets.Layout(width='100%'))
        self.confusion_box.add_class('fw-confusion')
        self.pairs, self.gallery, self.note = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.pair = widgets.Dropdown(description='Items of', layout=control_layout(),
                                     style={'description_width': '60px'})
        self.pair_items = widgets.HTML()
        self.pair_items.add_class('fw-pair-items')
        self.widget = widgets.VBox([
            widgets.HTML('<h3>Confusion matrix and top losses</h3>'), self.epoch, self.note,
            widgets.Box([widgets.VBox([self.normalised, self.confusion_box], layout=widgets.Layout(width='100%')),
                         widgets.VBox([widgets.HTML('<b>Most confused</b>'), self.pairs, self.pair])],
                        layout=grid_layout()),
            self.pair_items, widgets.HTML('<b>Top losses</b>'), self.gallery])
        self._asked = 0  # which request the shown epoch answers: a late answer to an older one is dropped
        self.epoch.observe(lambda _: self.show_epoch(), 'value')
        self.normalised.observe(lambda _: self.show_epoch(), 'value')
        self.pair.observe(lambda change: change.new is not None and self.show_pair(*change.new), 'value')

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
        self.reads.then(lambda: (self.store.confusion(run_id, epoch), self.store.top_losses(run_id, epoch),
                                 current(self.store.rows('decisions', run_id))),
                        lambda found: asked == self._asked and self._render(epoch, *found))

    def _render(self, epoch: int, confusion: ConfusionMatrix | None, top: list[TopLossRow], decided: dict) -> None:
        self.pair_items.value = ''
        if confusion is None:
            self.note.value = f"<p class='fw-muted'>No confusion matrix recorded for epoch {epoch}.</p>"
            self.pairs.value = ''
        else:
            self.note.value = ''
            vocab = [str(v) for v in confusion.vocab]
            if self.confusion is None or self.confusion.names != vocab:
                for model in self.confusion_box.children: model.close()
                self.confusion, self.confusion_box.children = ConfusionChart(vocab, self.show_pair), []
            # Drawn before a new chart's widget exists: its first snapshot then carries the colours and the hover,
            # which changes sent before the browser has the view would lose.
            self.confusion.show(confusion.cells, self.normalised.value)
            if not self.confusion_box.children:
                self.confusion_box.children = [ChartWidget(self.confusion.fig, layout=widgets.Layout(width='100%'))]
            pairs = most_confused(confusion.cells, vocab)
            self.pairs.value = pairs_html(pairs)
            with self.pair.hold_trait_notifications():
                self.pair.options = [('a cell or pair…', None), *[(f'{a} → {p} ({n})', (vocab.index(a), vocab.index(p)))
                                                                  for a, p, n in pairs]]
                self.pair.value = None
        self.gallery.value = gallery_html(top, decided)

    def show_pair(self, actual: int, predicted: int) -> None:
        "Show the validation items of a cell of the shown epoch's matrix (actual, predicted class indices)."
        run_id, epoch = self.run_id, self.epoch.value
        self.reads.then(lambda: self._pair(run_id, epoch, actual, predicted),
                        lambda pair: (run_id, epoch) == (self.run_id, self.epoch.value) and self._show_pair(pair))

    def _show_pair(self, pair: PairItems | None) -> None:
        self.pair_items.value = pair_items_html(pair)

    def _pair(self, run_id: str, epoch: int, actual: int, predicted: int) -> PairItems | None:
        store = self.store
        rows = store.rows('item_epochs', run_id, split='valid', epoch=epoch)
        if not rows: return None
        values = ItemValues.unpack(rows[0].n_items, rows[0].item_values)
        at = np.flatnonzero((values.label == actual) & (values.predicted == predicted))
        at = at[np.argsort(-np.nan_to_num(values.loss[at], nan=np.inf), kind='stable')]
        names = item_names(store, run_id, 'valid')
        images = item_thumbnails(store, run_id, 'valid', epoch)
        vocab = [str(v) for v in store.run(run_id).vocab or []]
        return PairItems(class_label(vocab, actual), class_label(vocab, predicted), [name_of(names, i) for i in at],
                         values.loss[at].tolist(), values.label_prob[at].tolist(),
                         [images.get(i) for i in at[:PAIR_ITEMS].tolist()], current(store.rows('decisions', run_id)))
