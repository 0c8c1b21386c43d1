"""fastwatch: record fastai training runs and watch them live in a Voila dashboard.

`import fastwatch` stays light (no torch, no fastai): `WatchCallback` is imported on first use.
The package follows the data: `record` (the callback and its writer) → `store` ← `view` (dashboard, server,
terminal) / `share` (links, Binder, exports) ← `cli`; `demo` trains and serves.
"""
__version__ = '0.1.0'

from .errors import FastwatchError, RunNotFound, StoreError
from .store import Store, open_store

__all__ = ['WatchCallback', 'open_store', 'Store', 'FastwatchError', 'StoreError', 'RunNotFound', '__version__']


def __getattr__(name: str):
    if name == 'WatchCallback':
        from .record.callback import WatchCallback
        return WatchCallback
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
