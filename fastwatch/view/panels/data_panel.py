"""The run's items, to clean the data with: the data map of a split (`charts.DataMapChart`), its suspects (likely
mislabeled, `store.dynamics`) page by page with thumbnails, the item picked on the map or in the list with its
history, and the decisions about items (`store.decisions`). Only the run's owner, on the page of the store that
`fastwatch serve` serves, gets controls to decide; every other page shows the decisions read-only."""
from __future__ import annotations

from collections.abc import Callable

import ipywidgets as widgets

from ...errors import StoreError
from ...store import Store, open_store
from ...store.decisions import ACTIONS, UNDO, decide, decision_text
from ...store.dynamics import SPLITS
from ...store.tables import DecisionRow
from ..charts import DataMapChart
from ..drawn import Drawn
from ..feed import ItemsFeed, ItemsRead
from ..html import escape, value_text
from ..reads import StoreReads
from .chart_grid import ChartWidget
from .epoch_panel import decision_html, thumbnail_html
from .pool import Pool
from .run_list import grid_layout

PAGE_SIZE = 16

Decide = Callable[[str, str, int, str, str, 'str | None'], DecisionRow]  # run, split, index, item, action, label


class OwnerDecisions:
    "Decisions recorded into the served store, opened for writing on the first one (`decide`'s arguments)."

    def __init__(self, location: str | None = None):
        self.location, self.store = location, None

    def __call__(self, run_id: str, split: str, index: int, item: str, action: str, label: str | None) -> DecisionRow:
        if self.store is None: self.store = open_store(self.location)
        return decide(self.store, run_id, split, index, item, action, label)


class SuspectCard:
    """One suspect's card: its thumbnail and values, and for the owner keep / delete / relabel. Cards are made as a
    page first needs them and shown again with other items (`Pool`): a new epoch changes their text, not their
    widgets."""

    def __init__(self, decide: Callable[..., None] | None):
        self.index = -1
        self.html = widgets.HTML()
        self.widget = self.html
        self.relabel: widgets.Dropdown | None = None
        if decide is None: return
        keep, delete = (widgets.Button(description=action, layout=widgets.Layout(width='70px'))
                        for action in ACTIONS[:2])
        self.relabel = widgets.Dropdown(options=[('relabel as…', None)], layout=widgets.Layout(width='144px'))
        keep.on_click(lambda _: decide(self.index, 'keep'))
        delete.on_click(lambda _: decide(self.index, 'delete'))
        self.relabel.observe(lambda change: change.new is not None and decide(self.index, 'relabel', change.new),
                             'value')
        self.widget = widgets.VBox([self.html, widgets.HBox([keep, delete]), self.relabel],
                                   layout=widgets.Layout(width='160px'))

    def render(self, index: int, html: str, vocab: list[str]) -> None:
        "Show item `index` of the split: its card's `html`, and the classes it may be relabelled as."
        self.index, self.html.value = index, html
        if self.relabel is None: return
        options = [('relabel as…', None), *[(v, v) for v in vocab]]
        if list(self.relabel.options) != options: self.relabel.options = options
        self.relabel.value = None


class DataPanel:
    """A split's data map and suspects, the picked item's history, and the decisions (`decide`: None on read-only
    pages), read once the page has drawn (`drawn`)."""
    css = """
.fw-card { width: 150px; margin: 0 10px 10px 0; font-size: 11px; line-height: 1.35; overflow-wrap: anywhere; }
.fw-card img { width: 100px; height: 100px; object-fit: contain; image-rendering: pixelated; background: #eee; }
.fw-card pre { white-space: pre-wrap; max-height: 8em; overflow: hidden; margin: 0; }
.fw-decided { color: #8a4b00; font-weight: bold; }
"""

    def __init__(self, store: Store, reads: StoreReads, drawn: Drawn, decide: Decide | None = None):
        self.store, self.reads, self.drawn, self.decide = store, reads, drawn, decide
        self.run_id: str | None = None
        self.feeds: dict[str, ItemsFeed] = {}  # the shown run's, by split
        self.read: ItemsRead | None = None
        self.page = 0
        self.split = widgets.ToggleButtons(options=SPLITS)
        self.chart = DataMapChart(self.pick)
        self.detail, self.note, self.page_label = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.previous, self.next = widgets.Button(description='‹ previous'), widgets.Button(description='next ›')
        self.cards = widgets.Box(layout=widgets.Layout(display='flex', flex_flow='row wrap', width='100%'))
        self.suspect_cards = Pool(lambda: SuspectCard(self.decide_item if decide else None))
        self.decisions = widgets.VBox()
        self.decisions_shown: tuple[DecisionRow, ...] | None = None  # the rows `decisions` shows
        for widget, name in (self.cards, 'fw-cards-page'), (self.detail, 'fw-detail'), (self.decisions, 'fw-decisions'):
            widget.add_class(name)
        self.widget = widgets.VBox([
            widgets.HTML('<h3>Items: data map and suspects</h3>'), self.split, self.note,
            widgets.Box([ChartWidget(self.chart.fig, layout=widgets.Layout(width='100%')), self.detail],
                        layout=grid_layout()),
            widgets.HTML('<b>Suspects</b> <span class="fw-muted">(most likely mislabeled first; score: the margin '
                         "of the label's probability over the highest other's, averaged over the epochs, recent ones "
                         'weighing most)</span>'),
            widgets.HBox([self.previous, self.page_label, self.next]), self.cards,
            widgets.HTML('<b>Decisions</b>' + ('' if decide else ' <span class="fw-muted">(read-only: only the '
                                               "run's owner, on fastwatch serve, can decide)</span>")),
            self.decisions])
        self.widget.layout.display = 'none'
        self.split.observe(lambda _: self._turn(0), 'value')
        self.previous.on_click(lambda _: self._turn(self.page - 1))
        self.next.on_click(lambda _: self._turn(self.page + 1))

    # --- reading ----------------------------------------------------------------------------------------
    def show_run(self, run_id: str) -> None:
        "Show a run's items: in a kernel, once the page has drawn its charts (`drawn`), outside one at once."
        self.run_id, self.page, self.feeds = run_id, 0, {}
        self.drawn.then(self.refresh)

    def refresh(self) -> None:
        "Read what is new of the split's items (a new epoch, a decision) and show them."
        split = self.split.value
        if self.run_id is None: return
        if split not in self.feeds: self.feeds[split] = ItemsFeed(self.store, self.run_id, split)
        feed = self.feeds[split]
        self.reads.then(feed.read, lambda read: feed is self.feeds.get(split) and self._render(read))


    # --- showing ----------------------------------------------------------------------------------------
    def _render(self, read: ItemsRead) -> None:
        self.read, found = read, read.found
        self.widget.layout.display = None if found is not None or read.decided else 'none'
        if found is None:
            self.note.value = f"<p class='fw-muted'>No per-item values recorded for the {read.split} items.</p>"
            self.cards.children = []
        else:
            self.note.value = (f"<p class='fw-muted'>{len(found.names)} {read.split} items over epochs "
                               f"{found.epochs[0]}-{found.epochs[-1]}; colour: how often each was predicted right. "
                               'Pick an item on the map for its history.</p>')
            self.chart.show(found, [read.label(c) for c in found.last.label])
            self._show_page()
        self._show_decisions()

    def _turn(self, page: int) -> None:
        self.page = max(0, page)
        if self.read is not None and self.read.split != self.split.value: self.refresh()
        else: self._show_page()

    def _show_page(self) -> None:
        read = self.read
        if read is None or read.found is None: return
        ranked = read.found.suspects()
        pages = max(1, -(-len(ranked) // PAGE_SIZE))
        self.page = min(self.page, pages - 1)
        self.page_label.value = f'&nbsp;page {self.page + 1} of {pages}&nbsp;'
        self.previous.disabled, self.next.disabled = self.page == 0, self.page >= pages - 1
        at = self.page * PAGE_SIZE
        shown = [(rank, int(i)) for rank, i in enumerate(ranked[at:at + PAGE_SIZE], at + 1)]
        cards = self.suspect_cards.take(len(shown))
        for card, (rank, index) in zip(cards, shown):
            card.render(index, self._item_html(index, rank), read.vocab)
        self.cards.children = [card.widget for card in cards]

    def _item_html(self, index: int, rank: int | None = None) -> str:
        read, found = self.read, self.read.found
        last, name = found.last, found.name(index)
        label, predicted = read.label(int(last.label[index])), read.label(int(last.predicted[index]))
        return (f"<div class='fw-card'>{thumbnail_html(read.images.get(index), name)}<br>"
                + (f'#{rank} ' if rank else '') + f'{escape(name)}<br><b>{escape(label)}</b> / {escape(predicted)}'
                f"<br>p(label) {value_text(float(last.label_prob[index]), '.2f')} · "
                f"loss {value_text(float(last.loss[index]), '.3f')}<br>"
                f"score {value_text(float(found.score[index]), '.2f')} · "
                f"right {value_text(float(found.correctness[index]), '.0%')}"
                + decision_html(read.decided.get((read.split, name))) + '</div>')

    def pick(self, index: int) -> None:
        "Show an item picked on the map: its thumbnail, label and prediction, and its values every epoch."
        found = self.read.found if self.read is not None else None
        if found is None or not 0 <= index < len(found.names): return
        rows = ''.join(f'<tr><td>{epoch}</td><td>{escape(self.read.label(int(h.predicted[index])))}</td>'
                       f"<td>{value_text(float(h.label_prob[index]), '.3f')}</td>"
                       f"<td>{value_text(float(h.loss[index]), '.3f')}</td></tr>"
                       for epoch, h in zip(found.epochs, found.history) if h.seen[index])
        self.detail.value = (self._item_html(index) + "<table class='fw-table'><tr><th>epoch</th><th>predicted</th>"
                             f'<th>p(label)</th><th>loss</th></tr>{rows}</table>')

    def _show_decisions(self) -> None:
        read = self.read
        decided = sorted(read.decided.values(), key=lambda row: row.seq)
        if tuple(decided) == self.decisions_shown: return  # a new epoch, no new decision: the same widgets again
        self.decisions_shown = tuple(decided)
        for row in self.decisions.children: row.close()
        rows = [widgets.HTML(f"<span class='fw-muted'>{len(decided)} decided</span>")]
        for row in decided:
            text = widgets.HTML(f'{escape(row.split)} · {escape(row.item)}: <span class="fw-decided">'
                                f'{escape(decision_text(row))}</span>')
            if self.decide is None:
                rows.append(text)
                continue
            undo = widgets.Button(description='undo', layout=widgets.Layout(width='60px'))
            undo.on_click(lambda _, row=row: self._record(row.split, row.item_index, row.item, UNDO))
            rows.append(widgets.HBox([text, undo]))
        self.decisions.children = rows

    # --- deciding ---------------------------------------------------------------------------------------
    def decide_item(self, index: int, action: str, label: str | None = None) -> None:
        "The owner decides about an item of the split shown."
        self._record(self.read.split, index, self.read.found.name(index), action, label)

    def _record(self, split: str, index: int, item: str, action: str, label: str | None = None) -> None:
        if self.decide is None:  # no control offers it: a request forged from a read-only page
            raise StoreError('this page shows decisions read-only: only the run\'s owner, on the page of '
                             'fastwatch serve, can decide')
        run_id = self.run_id
        self.reads.then(lambda: self.decide(run_id, split, index, item, action, label), lambda _: self.refresh())
