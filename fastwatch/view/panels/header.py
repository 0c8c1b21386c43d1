"""The top of the page: the shown run's name, state and progress (`Header`), the alerts sent about it
(`AlertList`), and whether live updates work (`StatusLine`)."""
from __future__ import annotations

import time

import ipywidgets as widgets

from ...formats import format_duration, format_when
from ...store import RunRecord
from ...store.records import STATES
from ...store.tables import AlertRow, BatchRow, EpochRow
from ..html import escape


def header_html(run: RunRecord, epochs: list[EpochRow], last: BatchRow | None, now: float | None = None) -> str:
    "The run's name and id, state, elapsed time, epoch x of n, current phase and time of the last update."
    now, info, state = now or time.time(), run.info, run.state
    live = last is not None and state == 'live'
    planned = info.planned_epochs or (epochs[-1].epoch + 1 if epochs else None)
    current = last.epoch + 1 if live else len(epochs)
    if live:
        phase = ('frozen body' if last.frozen else 'unfrozen') + (
            f' (fit {last.fit + 1} of {len(info.fits)})' if len(info.fits) > 1 else '')
    else:
        phase = '—'
    updated = max([run.updated_at, *([last.time] if last else [])])
    elapsed = (now if state == 'live' else run.updated_at) - run.created_at
    parts = [f"<span class='fw-name'>{escape(run.name or 'run')}</span>", f'<code>{escape(run.id)}</code>',
             f"<span class='fw-state fw-{state if state in STATES else 'interrupted'}'>{escape(state)}</span>",
             f'<span>elapsed {format_duration(elapsed)}</span>',
             f"<span>epoch {current} of {escape(planned) if planned else '?'}</span>",
             f'<span>phase {escape(phase)}</span>',
             f"<span class='fw-muted'>last update {format_when(updated)[11:]}</span>"]
    if run.published_age is not None:  # a followed published run: how far behind the trainer it is
        parts.append(f"<span class='fw-muted fw-age'>published data {format_duration(run.published_age)} old</span>")
    if run.error: parts.append(f"<span class='fw-error'>{escape(run.error)}</span>")
    return f"<div class='fw-header'>{''.join(parts)}</div>"


def alerts_html(alerts: list[AlertRow]) -> str:
    "The alerts sent about the run, newest first; nothing when there are none."
    if not alerts: return ''
    items = ''.join(f"<li><span class='fw-muted'>{format_when(a.time)[11:]}</span> "
                    f'{escape(a.message.splitlines()[0])}'
                    + ('' if a.delivered else " <span class='fw-error'>(not delivered)</span>") + '</li>'
                    for a in reversed(alerts))
    return f"<div class='fw-alert-list'><b>Alerts</b><ul class='fw-alerts'>{items}</ul></div>"


class Header:
    "The shown run's name, id, state, elapsed time, epoch, phase and last update."
    css = """
.fw-header { display: flex; flex-wrap: wrap; gap: 4px 14px; align-items: baseline; }
.fw-name { font-size: 20px; font-weight: 600; overflow-wrap: anywhere; }
.fw-state { padding: 1px 9px; border-radius: 9px; color: white; font-weight: 600; }
.fw-live { background: #2ca02c; } .fw-finished { background: #1f77b4; }
.fw-failed { background: #d62728; } .fw-interrupted { background: #ff7f0e; } .fw-stale { background: #7f7f7f; }
"""

    def __init__(self):
        self.widget = widgets.HTML()

    def render(self, run: RunRecord, epochs: list[EpochRow], last: BatchRow | None) -> None:
        self.widget.value = header_html(run, epochs, last)


class AlertList:
    "The alerts sent about the shown run."
    css = """
.fw-alerts { margin: 4px 0; padding-left: 18px; font-size: 13px; } .fw-alerts li { overflow-wrap: anywhere; }
"""

    def __init__(self):
        self.widget = widgets.HTML()

    def render(self, alerts: list[AlertRow]) -> None:
        self.widget.value = alerts_html(alerts)


class StatusLine:
    "Whether live updates work: empty while they do, else what is wrong."
    css = ''

    def __init__(self):
        self.widget = widgets.HTML()

    def error(self, message: str | None) -> None:
        "Say what stops live updates (None: they work again)."
        self.widget.value = '' if message is None else \
            f"<p class='fw-error'>Live updates: {escape(message)}</p>"

    def note(self, message: str) -> None:
        self.widget.value = f"<p class='fw-muted'>{escape(message)}</p>"
