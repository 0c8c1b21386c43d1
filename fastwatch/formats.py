"""How fastwatch writes times and numbers for people: one format for each, shared by the dashboard, the CLI and
the exports."""
from __future__ import annotations

import math
import time
import unicodedata


def format_when(timestamp: float | None) -> str:
    "A moment as local `YYYY-mm-dd HH:MM:SS`, or a dash when there is none."
    return time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(timestamp)) if timestamp else '—'


def format_duration(seconds: float) -> str:
    "A duration as fastai's Recorder prints it: mm:ss, or h:mm:ss."
    t = max(0, int(seconds))
    h, m, s = t // 3600, t // 60 % 60, t % 60
    return f'{h}:{m:02d}:{s:02d}' if h else f'{m:02d}:{s:02d}'


def format_number(value) -> str:
    "A metric or loss: 6 significant digits; NaN and infinities as `nan`, `inf`, `-inf`; nothing for None."
    if value is None: return ''
    if isinstance(value, float): return str(value) if not math.isfinite(value) else f'{value:.6g}'
    return str(value)


def format_column(column: str, value) -> str:
    "A value of a table of runs (`RunSummary.columns()`) as `fastwatch ls` and the dashboard's runs table show it."
    if value is None: return ''
    if column == 'started': return format_when(value)
    if column == 'duration': return f'{value:.0f} s'
    if isinstance(value, float): return format_number(value)
    return str(value)


def printable(text: str) -> str:
    "Text for a terminal: control characters (escape sequences among them) shown as `\\x1b`-style escapes."
    return ''.join(c if c in '\n\t' or unicodedata.category(c) != 'Cc' else repr(c)[1:-1] for c in text)
