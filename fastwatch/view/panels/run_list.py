"""Which run the page shows, and which runs it overlays on its charts: `RunList`, kept current as runs start,
change state and end."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import ipywidgets as widgets

from ...store import RunRecord
from ..html import run_label

GRID = widgets.Layout(display='grid', grid_template_columns='repeat(auto-fill, minmax(min(100%, 440px), 1fr))',
                      grid_gap='10px', width='100%')


def control_layout() -> widgets.Layout:
    "A control's layout: its grid cell's width, at most 560 px; min_width 0 so long run names never widen the page."
    return widgets.Layout(width='auto', min_width='0', max_width='560px')


class RunList:
    """A picker of the run to show and a list of runs to overlay on it. A run picked alone starts with no overlay.
    `on_show(run_id, overlay)` is called when the person viewing changes either."""
    css = ''

    def __init__(self, on_show: Callable[[str, tuple[str, ...]], None]):
        self.on_show = on_show
        label = {'description_width': '60px'}
        self.picker = widgets.Dropdown(description='Run', layout=control_layout(), style=label)
        self.overlay = widgets.SelectMultiple(description='Overlay', rows=3, layout=control_layout(), style=label)
        self.widget = widgets.Box([self.picker, self.overlay], layout=GRID)
        self._quiet = False
        self.picker.observe(self._picked, 'value')
        self.overlay.observe(self._overlaid, 'value')

    @contextmanager
    def _changing(self):
        "Change the controls from code: their observers stay quiet."
        self._quiet = True
        try: yield
        finally: self._quiet = False

    def render(self, runs: list[RunRecord], shown: str | None = None) -> None:
        "List `runs` (their labels say their states now), keeping what is picked and overlaid; or pick `shown`."
        options = [(run_label(r), r.id) for r in runs]
        ids = {r.id for r in runs}
        with self._changing():
            picked = shown if shown is not None else self.picker.value
            overlaid = tuple(i for i in self.overlay.value if i in ids)
            self.picker.options, self.overlay.options = options, options
            self.picker.value = picked if picked in ids else (runs[0].id if runs else None)
            self.overlay.value = overlaid

    def _picked(self, change) -> None:
        if self._quiet or not change['new']: return
        with self._changing(): self.overlay.value = ()
        self.on_show(change['new'], ())

    def _overlaid(self, change) -> None:
        if self._quiet or not self.picker.value: return
        self.on_show(self.picker.value, tuple(change['new']))
