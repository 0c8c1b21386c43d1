"""The store's runs side by side (`RunsTable`): a row a run with every column of `RunSummary.columns()`, sorted by
any column, filtered by text and state, a page of rows at a time. A row's name opens the run; its tick overlays the
run on the shown run's charts. A page's rows are widgets made once (`Pool`) whose values change: a store of 1,000 runs
costs the page what a store of 20 does, and a store of one run what one row does."""
from __future__ import annotations

from collections.abc import Callable

import ipywidgets as widgets

from ...formats import format_column
from ...store.records import STATES
from ...store.runs_table import RunSummary, sort_rows
from ..html import escape
from .pool import Pool

ROWS_PER_PAGE = 20
CELL_WIDTH = 112  # px a column
# Columns shown inside others: the id is the name button's tooltip, epochs read `done/planned`, a best value its epoch.
FOLDED = ('run', 'name', 'planned_epochs')
ANY_STATE = 'any state'


def shown_columns(rows: list[dict]) -> list[str]:
    "The columns the table shows for rows of `RunSummary.columns()`: every one, in the order the runs have them."
    every = dict.fromkeys(column for row in rows for column in row)
    return [c for c in every if c not in FOLDED and not (c.startswith('best_') and c.endswith('_epoch'))]


def cell_text(column: str, row: dict) -> str:
    "One cell as the table shows it: epochs as done/planned, a best value with its epoch."
    value = row.get(column)
    if column == 'epochs' and row.get('planned_epochs'): return f"{value}/{row['planned_epochs']}"
    if column.startswith('best_') and value is not None and f'{column}_epoch' in row:
        return f"{format_column(column, value)} @{row[f'{column}_epoch']}"
    return format_column(column, value)


def matches(row: dict, text: str, state: str) -> bool:
    "Whether a row passes the filters: its state, and `text` in any of its values (case aside)."
    if state != ANY_STATE and row.get('state') != state: return False
    return not text or any(text.lower() in str(value).lower() for value in row.values() if value is not None)


class RunRow:
    "One row's widgets: the tick that overlays the run, the button with its name that opens it, its cells."

    def __init__(self, on_tick: Callable[[str, bool], None], on_open: Callable[[str], None]):
        self.run_id: str | None = None
        self.tick = widgets.Checkbox(indent=False, layout=widgets.Layout(width='28px', min_width='28px'))
        self.open = widgets.Button(layout=widgets.Layout(width='180px', min_width='180px'))
        self.cells = widgets.HTML()
        self.widget = widgets.HBox([self.tick, self.open, self.cells])
        self.widget.add_class('fw-rt-row')
        self._quiet = False
        self.tick.observe(lambda change: self._quiet or on_tick(self.run_id, change['new']), 'value')
        self.open.on_click(lambda _: on_open(self.run_id))

    def render(self, row: dict, columns: list[str], shown: bool, ticked: bool) -> None:
        "Show `row`, a row of `RunSummary.columns()`."
        self.run_id = row['run']
        self._quiet = True
        try: self.tick.value, self.tick.disabled = ticked and not shown, shown
        finally: self._quiet = False
        self.open.description, self.open.tooltip = row.get('name') or row['run'][:8], f"open run {row['run']}"
        (self.widget.add_class if shown else self.widget.remove_class)('fw-rt-shown')
        self.cells.value = cells_html([cell_text(c, row) for c in columns], f"fw-{row.get('state')}")


def cells_html(texts: list[str], kind: str = '') -> str:
    "A row of cells, each `CELL_WIDTH` wide, so that the header and every row line up."
    spans = ''.join(f"<span title='{escape(t)}'>{escape(t)}</span>" for t in texts)
    return (f"<div class='fw-rt-cells {kind}' style='grid-template-columns: repeat({len(texts)}, {CELL_WIDTH}px)'>"
            f'{spans}</div>')


class RunsTable:
    """The runs table. `on_open(run_id)` when a run's name is clicked, `on_overlay(run_ids)` when the ticks change;
    `overlaid()` the runs asked to be overlaid, which are ticked (the dashboard keeps them). `render(summaries, shown)`
    shows the store's runs as they are now, keeping sort, filters and page."""
    css = """
.fw-runs-table { width: 100%; overflow-x: auto; }
.fw-rt-controls { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
.fw-rt-row, .fw-rt-header { align-items: center; min-width: max-content; }
.fw-rt-row .widget-button { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; text-align: left; }
.fw-rt-shown { background: #eef4fb; }
.fw-rt-cells { display: grid; font-size: 13px; }
.fw-rt-cells span { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; padding-right: 8px; }
.fw-rt-header .fw-rt-cells { font-weight: 600; }
"""

    def __init__(self, on_open: Callable[[str], None], on_overlay: Callable[[tuple[str, ...]], None],
                 overlaid: Callable[[], tuple[str, ...]], rows_per_page: int = ROWS_PER_PAGE):
        self.on_open, self.on_overlay, self.overlaid, self.rows_per_page = on_open, on_overlay, overlaid, rows_per_page
        self.summaries: list[RunSummary] = []
        self.shown: str | None = None
        self.page = 0
        self.filter = widgets.Text(placeholder='filter: name, model, setting…', layout=widgets.Layout(width='240px'))
        self.state = widgets.Dropdown(options=[ANY_STATE, *STATES], layout=widgets.Layout(width='130px'))
        self.sort = widgets.Dropdown(description='sort by', options=['started'], value='started',
                                     style={'description_width': '50px'}, layout=widgets.Layout(width='230px'))
        self.descending = widgets.ToggleButton(value=True, description='descending',
                                               layout=widgets.Layout(width='110px'))
        self.previous = widgets.Button(description='‹', layout=widgets.Layout(width='36px'))
        self.next = widgets.Button(description='›', layout=widgets.Layout(width='36px'))
        self.count = widgets.HTML()
        controls = widgets.HBox([self.filter, self.state, self.sort, self.descending, self.previous, self.count,
                                 self.next])
        controls.add_class('fw-rt-controls')
        self.header = widgets.HTML()
        header = widgets.HBox([widgets.HTML(layout=widgets.Layout(width='28px', min_width='28px')),
                               widgets.HTML('<b>run</b>', layout=widgets.Layout(width='180px', min_width='180px')),
                               self.header])
        header.add_class('fw-rt-header')
        self.above_rows = (controls, header)
        self.rows: list[RunRow] = []  # the page's rows, in order
        self.row_pool = Pool(lambda: RunRow(self._ticked, self._opened))
        self.widget = widgets.VBox(self.above_rows)
        self.widget.add_class('fw-runs-table')
        for control in (self.filter, self.state, self.sort, self.descending):
            control.observe(lambda _: self._turn(0), 'value')
        self.previous.on_click(lambda _: self._turn(self.page - 1))
        self.next.on_click(lambda _: self._turn(self.page + 1))

    def render(self, summaries: list[RunSummary], shown: str | None = None) -> None:
        "Show `summaries` (every run of the store) with `shown` open (None: as it was) and the overlaid runs ticked."
        self.summaries = summaries
        if shown is not None: self.shown = shown
        self._draw()

    def visible(self, every: list[dict]) -> list[dict]:
        "The rows of `every` (a row a run) that pass the filters, sorted: every page of them."
        rows = [row for row in every if matches(row, self.filter.value.strip(), self.state.value)]
        return sort_rows(rows, self.sort.value, self.descending.value)

    def _draw(self) -> None:
        every = [summary.columns() for summary in self.summaries]
        rows, columns = self.visible(every), shown_columns(every)
        if list(self.sort.options) != ['started', *[c for c in columns if c != 'started']]:
            self.sort.options = ['started', *[c for c in columns if c != 'started']]
        pages = max(1, -(-len(rows) // self.rows_per_page))
        self.page = min(self.page, pages - 1)
        first = self.page * self.rows_per_page
        on_page = rows[first:first + self.rows_per_page]
        self.header.value = cells_html(columns)
        self.rows, overlaid = self.row_pool.take(len(on_page)), self.overlaid()
        for slot, row in zip(self.rows, on_page):
            slot.render(row, columns, row['run'] == self.shown, row['run'] in overlaid)
        if len(self.widget.children) != len(self.above_rows) + len(self.rows):
            self.widget.children = [*self.above_rows, *(slot.widget for slot in self.rows)]
        self.count.value = (f"<span class='fw-muted'>{first + 1}–{first + len(on_page)} of {len(rows)} runs</span>"
                            if rows else "<span class='fw-muted'>no runs match</span>")
        self.previous.disabled, self.next.disabled = self.page == 0, self.page >= pages - 1

    def _turn(self, page: int) -> None:
        self.page = max(0, page)
        self._draw()

    def _ticked(self, run_id: str, ticked: bool) -> None:
        overlaid = [i for i in self.overlaid() if i != run_id] + ([run_id] if ticked else [])
        self.on_overlay(tuple(overlaid))

    def _opened(self, run_id: str) -> None:
        self.shown = run_id
        self.on_open(run_id)
        self._draw()
