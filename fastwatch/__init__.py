"""fastwatch: record fastai training runs and watch them live in a Voila dashboard.

`import fastwatch` stays light (no torch, no fastai, no widgets): `WatchCallback` and `show` are imported on first
use.
The package follows the data: `record` (the callback and its writer) → `store` ← `view` (dashboard, server,
terminal) / `share` (links, Binder, exports) ← `cli`; `demo` trains and serves.
"""
__version__ = '0.1.0'

from .errors import FastwatchError, RunNotFound, StoreError
from .store import Store, open_store

__all__ = ['WatchCallback', 'show', 'open_store', 'Store', 'FastwatchError', 'StoreError', 'RunNotFound',
           '__version__']


def __getattr__(name: str):
    "`WatchCallback` (torch, fastai) and `show` (widgets, bokeh), imported when first asked for."
    if name == 'WatchCallback':
        from .record.callback import WatchCallback
        return WatchCallback
    if name == 'show':
        from .view.inline import show
        return show
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
