"""Which run the page shows and over which x axis: `RunList`, a picker kept current as runs start, change state and
end (the runs table, `runs_table.py`, picks the runs overlaid on it), and the x axis of the charts over steps."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import ipywidgets as widgets

from ...store import RunRecord
from ..html import run_label
from ..timeline import X_AXES


def grid_layout() -> widgets.Layout:
    "A row of grid cells at least 440 px wide, as many as fit (each widget its own: a layout is a widget too)."
    return widgets.Layout(display='grid', grid_template_columns='repeat(auto-fill, minmax(min(100%, 440px), 1fr))',
                          grid_gap='10px', width='100%')


def control_layout() -> widgets.Layout:
    "A control's layout: its grid cell's width, at most 560 px; min_width 0 so long run names never widen the page."
    return widgets.Layout(width='auto', min_width='0', max_width='560px')


class RunList:
    """A picker of the run to show and of the charts' x axis: `on_show(run_id)` is called when the person viewing
    picks another run, `on_axis(axis)` another axis (a key of `X_AXES`)."""
    css = ''

    def __init__(self, on_show: Callable[[str], None], on_axis: Callable[[str], None]):
        self.on_show = on_show
        label = {'description_width': '60px'}
        self.picker = widgets.Dropdown(description='Run', layout=control_layout(), style=label)
        self.axis = widgets.Dropdown(description='x axis', options=[(name, axis) for axis, name in X_AXES.items()],
                                     layout=control_layout(), style=label)
        self.widget = widgets.Box([self.picker, self.axis], layout=grid_layout())
        self._quiet = False
        self.picker.observe(self._picked, 'value')
        self.axis.observe(lambda change: on_axis(change['new']), 'value')

    @contextmanager
    def _changing(self):
        "Change the controls from code: their observers stay quiet."
        self._quiet = True
        try: yield
        finally: self._quiet = False

    def render(self, runs: list[RunRecord], shown: str | None = None) -> None:
        "List `runs` (their labels say their states now), keeping what is picked; or pick `shown`."
        options = [(run_label(r), r.id) for r in runs]
        ids = {r.id for r in runs}
        with self._changing():
            picked = shown if shown is not None else self.picker.value
            if options != list(self.picker.options): self.picker.options = options
            self.picker.value = picked if picked in ids else (runs[0].id if runs else None)

    def _picked(self, change) -> None:
        if not self._quiet and change['new']: self.on_show(change['new'])
