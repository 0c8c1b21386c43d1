"""fastwatch: record fastai training runs and watch them live in a Voila dashboard.

`import fastwatch` stays light (no torch, no fastai): `WatchCallback` is imported on first use.
"""
__version__ = '0.1.0'

from .schema import StoreError
from .store import RunNotFound, Store, open_store

__all__ = ['WatchCallback', 'open_store', 'Store', 'StoreError', 'RunNotFound', '__version__']


def __getattr__(name: str):
    if name == 'WatchCallback':
        from .callback import WatchCallback
        return WatchCallback
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
