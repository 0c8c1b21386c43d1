"""Small pieces of the dashboard's HTML: escaping, numbers as the page shows them, the page's base style, and the
message page that says what is wrong. Names from the store reach the page only through `escape`."""
from __future__ import annotations

import html
import math

from ..formats import format_number, format_when
from ..links import dashboard_query
from ..store import RunRecord

BASE_STYLE = """
.fastwatch { width: 100%; max-width: 1400px; margin: 0 auto; box-sizing: border-box; font-size: 14px; }
.fastwatch * { box-sizing: border-box; }
.fw-muted { color: #666; } .fw-error { color: #b00; overflow-wrap: anywhere; }
.fw-table td, .fw-table th { padding: 2px 10px 2px 0; text-align: left; overflow-wrap: anywhere; }
.fw-message { max-width: 720px; padding: 12px; font-size: 15px; }
"""


def escape(value) -> str:
    "Text for HTML, quotes included."
    return html.escape(str(value), quote=True)


def style(*parts: str) -> str:
    "A `<style>` element of the base style and `parts` (each panel's own)."
    return '<style>' + BASE_STYLE + ''.join(parts) + '</style>'


def value_text(value: float | None, spec: str) -> str:
    "A loss or probability as shown: the store keeps one that was not finite as None, shown as nan."
    if value is None: value = math.nan
    return format(value, spec) if math.isfinite(value) else format_number(value)


def class_label(vocab: list[str], c: int) -> str:
    "Class `c` of a run's vocabulary as shown (its number when the run has no such class)."
    return vocab[c] if 0 <= c < len(vocab) else str(c)


def run_label(run: RunRecord) -> str:
    "How a run is named in lists: name, state, start and the first characters of its id."
    return f"{run.name or 'run'} · {run.state} · {format_when(run.created_at)[:16]} · {run.id[:8]}"


def message_html(message: str, runs: list[RunRecord] | None = None, store: str | None = None,
                 stores: list[str] | None = None) -> str:
    "A page that says what is wrong and lists what there is to open instead."
    parts = [f"<div class='fw-message'><p class='fw-error'>{escape(message)}</p>"]
    if runs:
        links = ''.join(f"<li><a href='?{escape(dashboard_query(r.id, store))}'>{escape(run_label(r))}</a></li>"
                        for r in runs)
        parts.append(f'<p>Runs in this store:</p><ul>{links}</ul>')
    if stores:
        links = ''.join(f"<li><a href='?{escape(dashboard_query(None, s))}'>{escape(s)}</a></li>" for s in stores)
        parts.append(f'<p>Stores in the served folder:</p><ul>{links}</ul>')
    parts.append("<p class='fw-muted'>The dashboard takes <code>?run=ID</code>, <code>?store=PATH</code> "
                 '(a store file in the served folder, or an https URL of one) and <code>?view=runs</code> (the runs '
                 'table alone).</p></div>')
    return ''.join(parts)
